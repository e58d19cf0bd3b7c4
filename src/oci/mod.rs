//! OCI vocabulary shared by every layer: digests, repository names, references, byte ranges and the
//! parts of manifests the mirror needs to read. Pure parsing, no I/O.

pub mod digest;
pub mod manifest;
pub mod name;
pub mod range;
pub mod schema1;

pub use digest::{Digest, DigestError, Hasher};
pub use manifest::{ManifestError, ManifestInfo};
pub use name::{NameError, Reference, RepoName, Tag};
pub use range::{ByteRange, RangeError};
