//! Repository names, tags and references, validated against the OCI distribution spec grammar
//! before anything else touches them (they become storage paths and upstream URLs).

use std::fmt;

use super::digest::{Digest, DigestError};

/// Distribution's limit on the whole name.
pub const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is {0} characters long; at most 255 are allowed")]
    TooLong(usize),
    #[error(
        "repository name component {0:?} is invalid: components are lowercase letters and digits, separated by '.', '_', '__' or dashes, and joined by '/'"
    )]
    BadComponent(String),
    #[error("tag {0:?} is invalid: tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    BadTag(String),
    #[error("reference is not a valid tag or digest: {0}")]
    BadDigestReference(DigestError),
}

/// A validated repository name such as `library/alpine`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        for component in s.split('/') {
            if !valid_component(component) {
                return Err(NameError::BadComponent(
                    component.chars().take(64).collect(),
                ));
            }
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> usize {
        self.0.split('/').count()
    }

    /// Prefix with `library/`, Docker Hub's namespace for official images.
    /// `alpine` → `library/alpine` (Docker Hub's official images), unless that would be
    /// longer than a name may be.
    pub fn with_library_prefix(&self) -> Self {
        if self.components() == 1 && self.0.len() + "library/".len() <= MAX_NAME_LEN {
            RepoName(format!("library/{}", self.0))
        } else {
            self.clone()
        }
    }

    /// [`RepoName::with_library_prefix`] when `on` (an upstream that maps names as Docker Hub
    /// does), else the name as it is.
    pub fn with_library_prefix_if(&self, on: bool) -> Self {
        if on {
            self.with_library_prefix()
        } else {
            self.clone()
        }
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
        let rest_ok = b
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-');
        if !first_ok || !rest_ok || b.len() > MAX_TAG_LEN {
            return Err(NameError::BadTag(s.chars().take(140).collect()));
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.contains(':') {
            Digest::parse(s)
                .map(Reference::Digest)
                .map_err(NameError::BadDigestReference)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_names() {
        for ok in [
            "alpine",
            "library/alpine",
            "a",
            "my-org/my_app",
            "a__b",
            "a---b",
            "a.b/c",
            "ghcr.io/org/app",
            "0/1/2/3",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok:?} refused");
        }
    }

    #[test]
    fn refuses_bad_names() {
        let long = "a".repeat(256);
        for bad in [
            "",
            "Alpine",
            "a//b",
            "/a",
            "a/",
            "..",
            "a/../b",
            "a___b",
            "a._b",
            "-a",
            "a-",
            "a%2eb",
            "a b",
            long.as_str(),
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn library_prefix_only_for_single_component() {
        assert_eq!(
            RepoName::parse("alpine")
                .unwrap()
                .with_library_prefix()
                .as_str(),
            "library/alpine"
        );
        assert_eq!(
            RepoName::parse("org/app")
                .unwrap()
                .with_library_prefix()
                .as_str(),
            "org/app"
        );
    }

    #[test]
    fn tags_and_references() {
        assert!(Tag::parse("latest").is_ok());
        assert!(Tag::parse("_x.Y-1").is_ok());
        assert!(Tag::parse(".hidden").is_err());
        assert!(Tag::parse("-x").is_err());
        assert!(Tag::parse("").is_err());
        assert!(Tag::parse(&"a".repeat(129)).is_err());
        assert!(Tag::parse(&"a".repeat(128)).is_ok());
        assert!(matches!(Reference::parse("v1"), Ok(Reference::Tag(_))));
        assert!(matches!(
            Reference::parse("sha256:abc"),
            Err(NameError::BadDigestReference(_))
        ));
    }
}

/// Property tests, and the strategies other modules' property tests build names from.
#[cfg(test)]
pub(crate) mod props {
    use proptest::prelude::*;
    use regex::Regex;

    use super::*;

    /// The distribution spec's repository name grammar, anchored.
    pub(crate) const NAME_RE: &str =
        r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$";
    const TAG_RE: &str = r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$";

    /// Path words that name endpoints, and so make routing ambiguous when they are components.
    pub(crate) const ROUTE_WORDS: &[&str] = &[
        "v2",
        "manifests",
        "blobs",
        "uploads",
        "tags",
        "list",
        "referrers",
        "catalog",
    ];

    /// One valid name component: spec-generated, or a word the router splits on.
    pub(crate) fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,2}",
            1 => proptest::sample::select(ROUTE_WORDS).prop_map(str::to_owned),
        ]
    }

    /// A valid repository name of one to five components.
    pub(crate) fn valid_name() -> impl Strategy<Value = String> {
        proptest::collection::vec(component(), 1..=5).prop_map(|c| c.join("/"))
    }

    /// A valid tag.
    pub(crate) fn valid_tag() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}",
            "[a-zA-Z0-9_][a-zA-Z0-9._-]{100,127}",
            proptest::sample::select(ROUTE_WORDS).prop_map(str::to_owned),
        ]
    }

    /// Strings near the grammar: the characters names are made of, the ones attacks use, and
    /// anything at all.
    pub(crate) fn name_like() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9._/-]{0,40}",
            "[a-zA-Z0-9._/%\\\\:@ -]{0,40}",
            proptest::collection::vec(
                prop_oneof![
                    component(),
                    Just("..".to_owned()),
                    Just(".".to_owned()),
                    Just("%2e%2e".to_owned()),
                    Just("%2F".to_owned()),
                    Just("\0".to_owned()),
                    Just("\\".to_owned()),
                    Just(String::new()),
                ],
                1..6
            )
            .prop_map(|c| c.join("/")),
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Accepted exactly when the spec's grammar matches and the length is within the limit.
        #[test]
        fn name_accepted_iff_spec_grammar(s in name_like()) {
            let re = Regex::new(NAME_RE).unwrap();
            let expected = re.is_match(&s) && s.len() <= MAX_NAME_LEN;
            let got = RepoName::parse(&s);
            prop_assert_eq!(got.is_ok(), expected, "{:?}: {:?}", s, got);
            if let Err(e) = got {
                // Errors echo input; they stay short whatever was sent.
                prop_assert!(e.to_string().len() <= 4096);
            }
        }

        /// Refusals echo only the start of the input (escaped), so a huge request cannot make a
        /// huge error response.
        #[test]
        fn errors_stay_short_for_huge_input(unit in any::<String>(), n in 1usize..2000) {
            let s = format!("{unit}\u{1b}").repeat(n);
            for e in [
                RepoName::parse(&s).err(),
                Tag::parse(&s).err(),
                Reference::parse(&s).err(),
                Reference::parse(&format!("sha256:{s}")).err(),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!(e.to_string().len() <= 4096, "{} bytes", e.to_string().len());
            }
        }

        #[test]
        fn valid_names_round_trip(s in valid_name()) {
            let n = RepoName::parse(&s).unwrap();
            prop_assert_eq!(n.as_str(), s.as_str());
            prop_assert_eq!(RepoName::parse(&n.to_string()).unwrap(), n.clone());
            prop_assert_eq!(n.components(), s.split('/').count());
        }

        #[test]
        fn library_prefix_keeps_names_valid(s in valid_name()) {
            let n = RepoName::parse(&s).unwrap();
            let p = n.with_library_prefix();
            prop_assert!(p.components() >= 2);
            prop_assert!(p.as_str().ends_with(n.as_str()));
            // Only the string check: `library/` + 250 characters may pass the length limit.
            prop_assert!(Regex::new(NAME_RE).unwrap().is_match(p.as_str()));
            prop_assert_eq!(p.with_library_prefix(), p.clone());
        }

        #[test]
        fn names_longer_than_the_limit_are_refused(c in "[a-z0-9]{1,20}", n in 13usize..40) {
            let s = vec![c; n].join("/");
            prop_assume!(s.len() > MAX_NAME_LEN);
            prop_assert_eq!(RepoName::parse(&s), Err(NameError::TooLong(s.len())));
        }

        #[test]
        fn tag_accepted_iff_spec_grammar(s in prop_oneof![
            valid_tag(),
            "[a-zA-Z0-9._/:%-]{0,130}",
            any::<String>(),
        ]) {
            let expected = Regex::new(TAG_RE).unwrap().is_match(&s);
            let got = Tag::parse(&s);
            prop_assert_eq!(got.is_ok(), expected, "{:?}", s);
            match got {
                Ok(t) => prop_assert_eq!(t.as_str(), s.as_str()),
                Err(e) => prop_assert!(e.to_string().len() <= 4096),
            }
        }

        #[test]
        fn references_round_trip(r in prop_oneof![
            valid_tag().prop_map(|t| Reference::Tag(Tag::parse(&t).unwrap())),
            crate::oci::digest::props::digest().prop_map(Reference::Digest),
        ]) {
            prop_assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        }

        /// A reference is a digest exactly when it has a colon, else a tag; nothing else.
        #[test]
        fn reference_is_a_tag_or_a_digest(s in prop_oneof![
            valid_tag(),
            "(sha256|sha512|md5|SHA256)?:?[0-9a-fA-F]{0,130}",
            any::<String>(),
        ]) {
            match Reference::parse(&s) {
                Ok(Reference::Tag(t)) => {
                    prop_assert!(!s.contains(':'));
                    prop_assert_eq!(t.as_str(), s.as_str());
                }
                Ok(Reference::Digest(d)) => prop_assert_eq!(d.to_string(), s),
                Err(NameError::BadDigestReference(_)) => {
                    prop_assert!(s.contains(':'));
                    prop_assert!(Digest::parse(&s).is_err());
                }
                Err(_) => {
                    prop_assert!(!s.contains(':'));
                    prop_assert!(Tag::parse(&s).is_err());
                }
            }
        }
    }
}
