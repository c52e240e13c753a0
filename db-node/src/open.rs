//! Opening a database: creating a fresh data file atomically, and choosing the state to open
//! at among the meta slots of the data file and of the redo file.

use crate::error::{Error, Result};
use crate::meta::{self, Meta, MetaErr, FLAG_LIST_COMPLETE};
use crate::page::{self, PAGE_SIZE};
use crate::store::{DataFile, Map, RedoFile};
use std::path::Path;

/// Write a fresh, empty database file next to `path`, flush it, and rename it into place.
pub(crate) fn create_file(path: &Path) -> Result<()> {
    let mut buf = vec![0u8; 4 * PAGE_SIZE];
    {
        let (metas, rest) = buf.split_at_mut(2 * PAGE_SIZE);
        let meta = Meta {
            txn: 0,
            root: 0,
            alloc_index: 3,
            page_count: 4,
            ..Meta::default()
        };
        meta.encode(&mut metas[..PAGE_SIZE]);
        let (bitmap, index) = rest.split_at_mut(PAGE_SIZE);
        page::init(bitmap, page::KIND_BITMAP, 0);
        page::wr64(bitmap, page::HEADER, 0b1111);
        page::seal(bitmap);
        page::init(index, page::KIND_INDEX, 0);
        page::set_count(index, 1);
        page::wr64(index, page::HEADER, 2);
        page::seal(index);
    }
    let tmp = path.with_extension("db.tmp");
    let io = |e| Error::io(&tmp, e);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&buf).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The state chosen at open.
pub(crate) struct Chosen {
    pub meta: Meta,
    /// A newer commit was incomplete and was rolled back.
    pub recovered: bool,
    /// Data-file meta slot the next checkpoint writes.
    pub next_ckpt_slot: u64,
    /// Redo-file slot the next logged commit writes.
    pub next_redo_slot: u64,
}

/// The slot to write next: an unusable one (damaged, or a rolled-back commit newer than the
/// chosen one), else the one with the older transaction.
fn next_slot(slots: &[std::result::Result<Meta, MetaErr>], chosen: u64) -> u64 {
    let usable = |s: &std::result::Result<Meta, MetaErr>| match s {
        Ok(m) if m.txn <= chosen => Some(m.txn),
        _ => None,
    };
    match (usable(&slots[0]), usable(&slots[1])) {
        (None, _) => 0,
        (_, None) => 1,
        (Some(a), Some(b)) => u64::from(b < a),
    }
}

/// Pick the valid meta with the highest transaction id whose listed pages are intact, among the
/// two data-file slots and the two redo-file slots.
pub(crate) fn choose_meta(file: &DataFile, redo: &RedoFile) -> Result<Chosen> {
    let path = &file.path;
    let len = file.file_len();
    if len < 2 * PAGE_SIZE as u64 {
        let first = file
            .map
            .page(0)
            .map(|p| p[..8] == meta::MAGIC)
            .unwrap_or(false);
        return Err(if first || len == 0 {
            Error::Truncated {
                path: path.clone(),
                detail: format!("{len} bytes, shorter than the two meta pages"),
            }
        } else {
            Error::NotADatabase { path: path.clone() }
        });
    }
    let data: Vec<std::result::Result<Meta, MetaErr>> = (0..2)
        .map(|i| file.map.page(i).map_or(Err(MetaErr::NoMagic), Meta::decode))
        .collect();
    if data.iter().all(|s| matches!(s, Err(MetaErr::NoMagic))) {
        return Err(Error::NotADatabase { path: path.clone() });
    }
    let redo_slots: Vec<std::result::Result<Meta, MetaErr>> =
        redo.read_slots()?.iter().map(|p| Meta::decode(p)).collect();
    for (s, p) in data
        .iter()
        .map(|s| (s, path))
        .chain(redo_slots.iter().map(|s| (s, &redo.path)))
    {
        if let Err(MetaErr::Newer(v)) = s {
            return Err(Error::NewerVersion {
                path: p.clone(),
                found: *v,
                supported: meta::FORMAT_VERSION,
            });
        }
    }
    // A logged commit counts only while the checkpoint it builds on is still in the data file
    // (a stale redo slot from long ago must not resurrect pages that were reused since).
    let base_present = |r: &Meta| {
        data.iter().any(|d| {
            d.as_ref()
                .is_ok_and(|d| d.txn == r.base && d.root == r.root)
        })
    };
    let mut valid: Vec<&Meta> = data
        .iter()
        .filter_map(|s| s.as_ref().ok())
        .chain(
            redo_slots
                .iter()
                .filter_map(|s| s.as_ref().ok())
                .filter(|r| base_present(r)),
        )
        .collect();
    valid.sort_by_key(|m| std::cmp::Reverse(m.txn));
    let mut problems: Vec<String> = data
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Err(MetaErr::Bad(d)) => Some(format!("meta page {i}: {d}")),
            Err(MetaErr::NoMagic) => Some(format!("meta page {i}: no magic")),
            _ => None,
        })
        .collect();
    for (n, m) in valid.iter().enumerate() {
        if m.page_count * PAGE_SIZE as u64 > len {
            return Err(Error::Truncated {
                path: path.clone(),
                detail: format!(
                    "{len} bytes but transaction {} uses {} pages of {PAGE_SIZE} bytes",
                    m.txn, m.page_count
                ),
            });
        }
        match verify_written(&file.map, m) {
            Ok(()) => {
                let mut meta = (*m).clone();
                meta.written = Vec::new();
                meta.flags &= !FLAG_LIST_COMPLETE;
                return Ok(Chosen {
                    meta,
                    recovered: n > 0,
                    next_ckpt_slot: next_slot(&data, m.txn),
                    next_redo_slot: next_slot(&redo_slots, m.txn),
                });
            }
            Err(d) => problems.push(format!("transaction {}: {d}", m.txn)),
        }
    }
    Err(Error::Corrupt {
        path: path.clone(),
        detail: if problems.is_empty() {
            "no usable meta page".into()
        } else {
            problems.join("; ")
        },
    })
}

/// Check the pages a commit lists still carry the checksums it wrote.
pub(crate) fn verify_written(map: &Map, m: &Meta) -> std::result::Result<(), String> {
    if m.flags & FLAG_LIST_COMPLETE == 0 {
        return Ok(());
    }
    for &(id, sum) in &m.written {
        let p = map
            .page(id)
            .filter(|_| id < m.page_count)
            .ok_or_else(|| format!("written page {id} beyond the file end"))?;
        if page::stored_checksum(p) != sum || page::compute_checksum(p) != sum {
            return Err(format!(
                "page {id} written by this commit is torn or damaged"
            ));
        }
    }
    Ok(())
}
