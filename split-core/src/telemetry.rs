//! Logging setup shared by every binary: `RUST_LOG` filters (default `info`), logs go to stderr so
//! stdout stays the program's output, and `json` switches to one JSON object per line.

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests starting several services in one process) is harmless: ignore it.
    let _ = if json { builder.json().try_init() } else { builder.compact().try_init() };
}
