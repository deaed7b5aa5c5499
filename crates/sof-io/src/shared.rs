//! Locating the project's shared data folder (`shared/` with `data/`, `genes/`, `nicheformer/`,
//! `fixtures/`) that sits beside a developer checkout and in CI, never on a user's machine.

use std::path::{Path, PathBuf};

/// The environment variable that points at the shared folder explicitly.
pub const SHARED_DIR_ENV: &str = "SOF_SHARED_DIR";

/// `$SOF_SHARED_DIR`, else the first `shared/` (holding `data/`) found beside `start` or one of
/// its ancestors.
pub fn shared_dir_from(start: &Path) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(SHARED_DIR_ENV) {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then_some(dir);
    }
    start.ancestors().map(|a| a.join("shared")).find(|s| s.join("data").is_dir())
}

/// [`shared_dir_from`] starting at the current directory.
pub fn shared_dir() -> Option<PathBuf> {
    shared_dir_from(&std::env::current_dir().ok()?)
}

/// For tests: the shared folder found from `start` (a crate's manifest directory), or `None`
/// with a note on stderr where it is absent, as on a user's machine. Under
/// `SOF_REQUIRE_SHARED=1` (CI) a missing folder panics instead, so no test passes by skipping.
#[allow(clippy::print_stderr)]
pub fn for_tests(start: &Path) -> Option<PathBuf> {
    let found = shared_dir_from(start);
    if found.is_none() {
        assert!(
            std::env::var_os("SOF_REQUIRE_SHARED").is_none(),
            "SOF_REQUIRE_SHARED is set but no shared/ folder was found"
        );
        eprintln!("note: shared/ data folder not found; skipping a test that needs it");
    }
    found
}
