//! Bearer tokens for the calls that change state (the emulator's `SetChannel`, the agent's
//! `Override`): the metadata `authorization: Bearer <token>`, compared in constant time.

use tonic::Status;
use tonic::metadata::MetadataMap;

/// A control token. Never printed: `Debug` shows only that one is set.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlToken(String);

impl ControlToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The metadata a client sends to present this token.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl std::fmt::Debug for ControlToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlToken(<redacted>)")
    }
}

impl std::str::FromStr for ControlToken {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// Why a call was refused; [`Denied::status`] words it for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The server has no token configured: the call is disabled.
    Disabled,
    /// No `authorization` metadata.
    Missing,
    /// `authorization` is not `Bearer <token>`.
    Malformed,
    /// A token, but not this server's.
    Wrong,
}

impl Denied {
    /// `UNAUTHENTICATED` when no (readable) token came, `PERMISSION_DENIED` when the call is
    /// disabled or the token is wrong. `call` names the RPC, `flag` the server's token option.
    pub fn status(self, call: &str, flag: &str) -> Status {
        match self {
            Self::Disabled => Status::permission_denied(format!(
                "{call} is disabled: start the server with {flag} TOKEN and send `authorization: Bearer TOKEN`"
            )),
            Self::Missing => Status::unauthenticated(format!("{call} needs the metadata `authorization: Bearer <control token>` ({flag})")),
            Self::Malformed => Status::unauthenticated(format!("{call}: the authorization metadata must be `Bearer <control token>`")),
            Self::Wrong => Status::permission_denied(format!("wrong control token for {call}")),
        }
    }
}

/// Checks the bearer token in `metadata` against `token` (`None`: the call is disabled).
pub fn check(token: Option<&ControlToken>, metadata: &MetadataMap) -> Result<(), Denied> {
    let token = token.filter(|t| !t.is_empty()).ok_or(Denied::Disabled)?;
    let value = metadata.get("authorization").ok_or(Denied::Missing)?;
    let presented = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).ok_or(Denied::Malformed)?;
    if token.matches(presented) { Ok(()) } else { Err(Denied::Wrong) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(v: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = v {
            m.insert("authorization", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn every_way_of_failing_has_its_own_answer() {
        let t = ControlToken::new("s3cret");
        assert_eq!(check(Some(&t), &md(Some("Bearer s3cret"))), Ok(()));
        assert_eq!(check(Some(&t), &md(Some("Bearer s3cre"))), Err(Denied::Wrong));
        assert_eq!(check(Some(&t), &md(Some("Bearer s3cretX"))), Err(Denied::Wrong));
        assert_eq!(check(Some(&t), &md(Some("s3cret"))), Err(Denied::Malformed));
        assert_eq!(check(Some(&t), &md(None)), Err(Denied::Missing));
        assert_eq!(check(None, &md(Some("Bearer s3cret"))), Err(Denied::Disabled));
        assert_eq!(check(Some(&ControlToken::new("")), &md(Some("Bearer "))), Err(Denied::Disabled));
        assert_eq!(Denied::Missing.status("SetChannel", "--control-token").code(), tonic::Code::Unauthenticated);
        assert_eq!(Denied::Wrong.status("SetChannel", "--control-token").code(), tonic::Code::PermissionDenied);
        assert_eq!(format!("{t:?}"), "ControlToken(<redacted>)");
    }
}
