//! How the daemons' log lines look: colour only for a person at a terminal.
//!
//! Under a kubelet or systemd, stderr is a pipe or a file, and escape
//! sequences there end up verbatim in `kubectl logs` and in every log
//! pipeline (`^[[2m2026-...^[[0m ^[[32m INFO^[[0m`). `NO_COLOR`
//! (<https://no-color.org>) turns colour off on a terminal too.

use std::ffi::OsStr;
use std::io::IsTerminal;

/// Whether log lines written to stderr may carry colour.
pub fn stderr_colour() -> bool {
    colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything but "".
fn colour(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))), "empty means unset");
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None), "a pipe or a file: never");
        assert!(!colour(false, Some(OsStr::new("1"))));
    }
}
