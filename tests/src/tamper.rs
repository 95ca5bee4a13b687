//! Tampering with a stopped server's data as an insider holding the master
//! key could: copy the folder, open the store directly, change it.

use std::path::Path;

use switchboard::store::crypt::load_key_file;
use switchboard::store::{Store, StoreConfig};

/// Copies a data folder (without the control socket).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else if e.file_name() != "control.sock" {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Opens the store of `data` with its master key, `tenant` placed in the
/// default region.
pub fn raw_store(data: &Path, tenant: &str) -> Store {
    let store = Store::open(StoreConfig {
        dir: data.join("store"),
        regions: vec!["local".into()],
        master: load_key_file(&data.join("keys").join("master.key"), false).unwrap(),
        next_master: None,
        track_changes: false,
    })
    .unwrap();
    store.place(tenant, "local").unwrap();
    store
}
