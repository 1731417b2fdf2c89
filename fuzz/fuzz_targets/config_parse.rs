//! The config parser and validator on arbitrary text: never panics, and every problem points
//! inside the text (or is 0:0, unknown).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(problems) = tandem::config::parse(text, "fuzz.toml") {
        assert!(!problems.0.is_empty());
        let lines: Vec<&str> = text.split('\n').collect();
        for p in &problems.0 {
            if p.line == 0 {
                assert_eq!(p.column, 0, "{p}");
                continue;
            }
            assert!(p.line <= lines.len(), "{p}");
            let width = lines[p.line - 1].chars().count();
            assert!((1..=width + 1).contains(&p.column), "{p}");
        }
    }
});
