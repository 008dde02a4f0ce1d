//! Config loading (`config::parse`): any text is a config or an error that
//! names a place in the text, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = std::path::Path::new("fuzz.toml");
    if let Err(e) = dome::config::parse(text, file) {
        assert!(!e.reason.is_empty(), "an error without a reason: {e:?}");
        assert!(e.line >= 1 && e.line <= text.lines().count() + 1, "{e:?}");
        let _ = e.to_string();
    }
});
