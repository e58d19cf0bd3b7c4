//! Token scopes as clients send them: accepted scopes have a valid type, a name and
//! well-formed actions, and print back to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocimirror::auth::ResourceActions;

fuzz_target!(|s: &str| {
    if let Ok(r) = ResourceActions::parse_scope(s) {
        assert!(!r.kind.is_empty() && !r.name.is_empty() && !r.actions.is_empty());
        assert!(
            r.actions
                .iter()
                .all(|a| !a.is_empty() && !a.contains([',', ':']))
        );
        assert_eq!(ResourceActions::parse_scope(&r.to_scope()).unwrap(), r);
    }
});
