//! Storing a share: a spool checked, fsynced (with [`Durability::Fsync`]) and renamed into
//! place without overwriting; the same bytes again succeed, different bytes are a conflict.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::ledger::InFlight;
use super::{Durability, Inner, WriteTicket};
use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;
use crate::store::{SpooledShare, StoreError};

impl Inner {
    pub(super) fn write_blocking(
        &self,
        spool: SpooledShare,
        mut ticket: WriteTicket,
    ) -> Result<(), StoreError> {
        let (si, share) = ticket.key;
        let dir = self.file_dir(&si);
        fs::create_dir_all(&dir).map_err(|e| StoreError::io("creating share directory", e))?;
        if self.durability == Durability::Fsync {
            // New directories are only durable once their parents' entries are. Synced on
            // every write, not only by the writer that created them: a concurrent writer
            // that found the directory made may otherwise acknowledge its share first.
            for parent in dir.ancestors().skip(1).take(2) {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| StoreError::io("syncing share directory", e))?;
            }
        }
        let temp = spool.into_temp_file();
        let created = match self.persist(temp, si, share) {
            Err(Persist::CrossDevice(spool)) => {
                // Built on another filesystem: copy it beside the shares so the rename is
                // atomic (into a spool of our own, locked like any other).
                let len = spool
                    .as_file()
                    .metadata()
                    .map_err(|e| StoreError::io("reading spool", e))?
                    .len();
                let local = SpooledShare::create(&self.root.join("tmp"), len)
                    .map_err(|e| StoreError::io("creating spool", e))?;
                io::copy(&mut spool.as_file(), &mut local.file())
                    .map_err(|e| StoreError::io("copying spool", e))?;
                match self.persist(local.into_temp_file(), si, share) {
                    Err(Persist::CrossDevice(_)) => Err(StoreError::Io {
                        context: "moving share into place",
                        message: "the store's tmp directory is on another filesystem".into(),
                    }),
                    Err(Persist::Failed(e)) => Err(e),
                    Ok(created) => Ok(created),
                }
            }
            Err(Persist::Failed(e)) => Err(e),
            Ok(created) => Ok(created),
        }?;
        {
            let key = ticket.key;
            let mut ledger = self.lock_ledger();
            let state = if ticket.holds {
                ticket.holds = false;
                ledger.in_flight.remove(&key)
            } else {
                None
            };
            let ours = created || ledger.creator(&key) == Some(ticket.owner);
            if state == Some(InFlight::Abandoned(ticket.owner)) && ours {
                // Taken back while this write (or a repeat of one that had landed) ran.
                ledger.created.pop(&key);
                self.remove_share(si, share)?;
                return Err(StoreError::Forbidden(
                    "the upload was abandoned while this share was being written".into(),
                ));
            }
            if !created {
                // The same bytes were stored already. If another upload wrote them, two
                // uploads now rely on this share, and neither may take it back.
                if !ours {
                    ledger.created.pop(&key);
                }
            } else if state.is_some() {
                ledger.created.put(key, (ticket.owner, Instant::now()));
            }
        }
        if self.durability == Durability::Fsync {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io("syncing share directory", e))?;
        }
        Ok(())
    }

    /// Renames `spool` over the share's path (readers see the old copy or the new one,
    /// whole), for a copy found corrupt; synced first when durable.
    pub(super) fn replace_blocking(
        &self,
        spool: SpooledShare,
        si: StorageIndex,
        share: ShareNum,
    ) -> Result<(), StoreError> {
        let dir = self.file_dir(&si);
        fs::create_dir_all(&dir).map_err(|e| StoreError::io("creating share directory", e))?;
        let mut temp = spool.into_temp_file();
        let local;
        if temp.path().parent() != Some(self.root.join("tmp").as_path()) {
            // Built elsewhere, perhaps on another filesystem: copied beside the shares so
            // the rename is atomic.
            let len = temp
                .as_file()
                .metadata()
                .map_err(|e| StoreError::io("reading spool", e))?
                .len();
            local = SpooledShare::create(&self.root.join("tmp"), len)
                .map_err(|e| StoreError::io("creating spool", e))?;
            io::copy(&mut temp.as_file(), &mut local.file())
                .map_err(|e| StoreError::io("copying spool", e))?;
            temp = local.into_temp_file();
        }
        if self.durability == Durability::Fsync {
            temp.as_file()
                .sync_all()
                .map_err(|e| StoreError::io("syncing share", e))?;
        }
        // Readers in this process holding the old file open move to the new one.
        self.lock_open().pop(&(si, share));
        temp.persist(self.share_path(&si, share))
            .map_err(|e| StoreError::io("moving share into place", e.error))?;
        self.lock_open().pop(&(si, share));
        if self.durability == Durability::Fsync {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io("syncing share directory", e))?;
        }
        Ok(())
    }

    /// Syncs (if durable) and renames `temp` to the share's path without overwriting.
    /// Whether it created the share (false: the same bytes were there already).
    fn persist(
        &self,
        temp: tempfile::NamedTempFile,
        si: StorageIndex,
        share: ShareNum,
    ) -> Result<bool, Persist> {
        if self.durability == Durability::Fsync {
            temp.as_file()
                .sync_all()
                .map_err(|e| Persist::Failed(StoreError::io("syncing share", e)))?;
        }
        let final_path = self.share_path(&si, share);
        match temp.persist_noclobber(&final_path) {
            Ok(_) => Ok(true),
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                let same = same_contents(e.file.as_file(), &final_path).map_err(|e| {
                    Persist::Failed(StoreError::io("comparing with the stored share", e))
                })?;
                if same {
                    Ok(false)
                } else {
                    Err(Persist::Failed(StoreError::Conflict {
                        storage_index: si,
                        share,
                    }))
                }
            }
            Err(e) if e.error.kind() == io::ErrorKind::CrossesDevices => {
                Err(Persist::CrossDevice(e.file))
            }
            Err(e) => Err(Persist::Failed(StoreError::io(
                "moving share into place",
                e.error,
            ))),
        }
    }
}

enum Persist {
    CrossDevice(tempfile::NamedTempFile),
    Failed(StoreError),
}

fn same_contents(candidate: &File, existing: &Path) -> io::Result<bool> {
    let mut existing = File::open(existing)?;
    let (la, lb) = (candidate.metadata()?.len(), existing.metadata()?.len());
    if la != lb {
        return Ok(false);
    }
    let mut a = vec![0u8; 1 << 16];
    let mut b = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    while offset < la {
        let n = (la - offset).min(a.len() as u64) as usize;
        candidate.read_exact_at(&mut a[..n], offset)?;
        existing.read_exact(&mut b[..n])?;
        if a[..n] != b[..n] {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}
