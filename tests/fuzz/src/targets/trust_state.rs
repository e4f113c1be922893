//! The updater's trust state on disk: the two copies of the anti-rollback floor and the
//! updater's state file, read as `model-updater` reads them at every start and check.
//!
//! The input is up to three files separated by NUL bytes: `trust/floor.json`,
//! `trust/floor.copy.json` and `updater-state.json`. Whatever the files hold:
//! - the floor read is never below a version either copy states on its own;
//! - the floor read, saved and read again is the same floor.

use std::cell::RefCell;
use std::collections::BTreeMap;

use model_updater::state::StateFile;
use model_updater::trust::{Floor, TrustStore};

thread_local! {
    static STATE_DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// Writes the files in `data` into a state folder and reads the trust state from it.
pub fn run(data: &[u8]) {
    STATE_DIR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let dir = cell.get_or_insert_with(|| {
            tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a state folder: {e}"))
        });
        let state_dir = dir.path();
        let trust = state_dir.join("trust");
        let _ = std::fs::remove_dir_all(&trust);
        let store = TrustStore::open(state_dir).unwrap_or_else(|e| panic!("trust store: {e}"));
        let mut parts = data.splitn(3, |b| *b == 0);
        let files = [
            trust.join("floor.json"),
            trust.join("floor.copy.json"),
            state_dir.join("updater-state.json"),
        ];
        for path in &files {
            let _ = std::fs::remove_file(path);
            if let Some(part) = parts.next() {
                std::fs::write(path, part).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
        let stated: Vec<Floor> = files[..2]
            .iter()
            .filter_map(|path| std::fs::read(path).ok())
            .filter_map(|bytes| serde_json::from_slice::<Floor>(&bytes).ok())
            .collect();
        let loaded = store
            .load_floor(&BTreeMap::new())
            .unwrap_or_else(|e| panic!("the floor does not load: {e}"));
        for copy in &stated {
            let floor = &loaded.floor;
            assert!(
                floor.root >= copy.root
                    && floor.timestamp >= copy.timestamp
                    && floor.snapshot >= copy.snapshot
                    && floor.targets >= copy.targets
                    && floor.latest_clock_ms >= copy.latest_clock_ms
                    && copy
                        .model_versions
                        .iter()
                        .all(|(model, v)| floor.model_version(model) >= *v),
                "the floor read {floor:?} is below a copy {copy:?}"
            );
        }
        store
            .save_floor(&loaded.floor)
            .unwrap_or_else(|e| panic!("the floor does not save: {e}"));
        let again = store
            .load_floor(&BTreeMap::new())
            .unwrap_or_else(|e| panic!("the saved floor does not load: {e}"));
        assert_eq!(
            again.floor, loaded.floor,
            "the floor changed through a save"
        );
        assert!(
            again.damaged.is_empty() && again.missing.is_empty(),
            "a floor just saved reads as damaged or missing"
        );
        let _ = StateFile::new(state_dir).load();
    });
}
