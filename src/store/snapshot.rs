//! Snapshots of the store: every record of its tree at one moment, in a
//! file, to start a new replica of a cluster's log from (the stream is
//! trimmed behind the snapshots).
//!
//! The writer takes the snapshot ([`super::Store::export_snapshot`]): it
//! commits what it holds, writes the overlay back, and copies the tree
//! while no commit can happen, so the copy is the state at one log
//! position (which it holds, with the node table, in its metadata).
//!
//! File layout: `CONNSTATE-SNAPSHOT-1\n`, then records of key length (4,
//! big-endian), key, value length (4), value; then a record of key length
//! `u32::MAX` whose 4 value bytes are the CRC-32 of everything before it.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::Path,
};

use super::StoreError;

const MAGIC: &[u8] = b"CONNSTATE-SNAPSHOT-1\n";
const END: u32 = u32::MAX;

/// The longest key or value a snapshot may hold: a damaged length reads
/// as an error, not as a huge allocation.
const MAX_RECORD: u32 = 64 << 20;

/// Records imported per sled batch.
const IMPORT_CHUNK: usize = 10_000;

fn io(e: std::io::Error) -> StoreError {
    StoreError::Sled(sled::Error::Io(e))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("snapshot: {what}"))
}

/// A writer that keeps the CRC of what it wrote.
struct Summed<W> {
    out: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Summed<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }
}

/// Writes every record of `db`'s tree to `path`; returns the records.
pub(super) fn write(db: &sled::Db, path: &Path) -> Result<u64, StoreError> {
    let file = File::create(path).map_err(io)?;
    let mut out = Summed {
        out: BufWriter::new(file),
        crc: crc32fast::Hasher::new(),
    };
    out.put(MAGIC).map_err(io)?;
    let mut records = 0;
    for item in db.iter() {
        let (key, value) = item?;
        let len = |b: &[u8]| {
            u32::try_from(b.len())
                .map(u32::to_be_bytes)
                .map_err(|_| corrupt("a record over 4 GiB"))
        };
        out.put(&len(&key)?).map_err(io)?;
        out.put(&key).map_err(io)?;
        out.put(&len(&value)?).map_err(io)?;
        out.put(&value).map_err(io)?;
        records += 1;
    }
    let crc = out.crc.clone().finalize();
    out.out.write_all(&END.to_be_bytes()).map_err(io)?;
    out.out.write_all(&crc.to_be_bytes()).map_err(io)?;
    let file = out.out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(records)
}

/// Reads a snapshot file into a new store folder `dir` (which must hold no
/// store yet); returns the records. A damaged file writes nothing that
/// lasts: the folder is removed again.
pub fn import(path: &Path, dir: &Path) -> Result<u64, StoreError> {
    if dir.exists() && std::fs::read_dir(dir).map_err(io)?.next().is_some() {
        return Err(StoreError::Corrupt(format!(
            "{} is not empty: a snapshot starts a new store only",
            dir.display()
        )));
    }
    let result = import_into(path, dir);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    // sled's I/O threads hold the folder's lock for a moment after its last
    // handle is gone; whoever opens the folder next waits for that here.
    wait_unlocked(dir);
    result
}

/// Waits (at most 10 s) until no one holds the lock of the sled folder
/// `dir`.
fn wait_unlocked(dir: &Path) {
    use fs2::FileExt;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("db"))
    else {
        return;
    };
    while std::time::Instant::now() < deadline {
        if file.try_lock_exclusive().is_ok() {
            let _ = FileExt::unlock(&file);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn import_into(path: &Path, dir: &Path) -> Result<u64, StoreError> {
    let mut input = BufReader::new(File::open(path).map_err(io)?);
    let mut crc = crc32fast::Hasher::new();
    let mut magic = vec![0u8; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .map_err(|_| corrupt("too short"))?;
    if magic != MAGIC {
        return Err(corrupt("not a connstate snapshot"));
    }
    crc.update(&magic);
    // No background flusher: it would hold the folder's lock for a moment
    // after the import, and the store opens the folder right after.
    let db = sled::Config::new().path(dir).flush_every_ms(None).open()?;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    let mut records = 0;
    let read_len = |input: &mut BufReader<File>| -> Result<u32, StoreError> {
        let mut len = [0u8; 4];
        input
            .read_exact(&mut len)
            .map_err(|_| corrupt("cut short"))?;
        Ok(u32::from_be_bytes(len))
    };
    loop {
        let key_len = read_len(&mut input)?;
        if key_len == END {
            let mut stored = [0u8; 4];
            input
                .read_exact(&mut stored)
                .map_err(|_| corrupt("cut short"))?;
            if u32::from_be_bytes(stored) != crc.finalize() {
                return Err(corrupt("checksum mismatch"));
            }
            break;
        }
        if key_len > MAX_RECORD {
            return Err(corrupt("a key longer than any the store writes"));
        }
        let mut key = vec![0u8; key_len as usize];
        input
            .read_exact(&mut key)
            .map_err(|_| corrupt("cut short"))?;
        let value_len = read_len(&mut input)?;
        if value_len > MAX_RECORD {
            return Err(corrupt("a value longer than any the store writes"));
        }
        let mut value = vec![0u8; value_len as usize];
        input
            .read_exact(&mut value)
            .map_err(|_| corrupt("cut short"))?;
        crc.update(&key_len.to_be_bytes());
        crc.update(&key);
        crc.update(&value_len.to_be_bytes());
        crc.update(&value);
        batch.insert(key, value);
        in_batch += 1;
        records += 1;
        if in_batch == IMPORT_CHUNK {
            db.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("a"))
            .open()
            .unwrap();
        for i in 0..2500u32 {
            db.insert(i.to_be_bytes(), vec![i as u8; (i % 7) as usize])
                .unwrap();
        }
        let file = dir.path().join("snap");
        assert_eq!(write(&db, &file).unwrap(), 2500);
        assert_eq!(import(&file, &dir.path().join("b")).unwrap(), 2500);
        let copy = sled::Config::new()
            .path(dir.path().join("b"))
            .open()
            .unwrap();
        assert!(
            db.iter()
                .map(Result::unwrap)
                .eq(copy.iter().map(Result::unwrap))
        );
        drop(copy);

        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        let damaged = import(&file, &dir.path().join("c"));
        assert!(damaged.is_err());
        assert!(
            !dir.path().join("c").exists(),
            "a damaged snapshot leaves nothing"
        );
        assert!(
            import(&file, &dir.path().join("b")).is_err(),
            "only into a new folder"
        );
    }
}
