//! Telling the kernel that a file changed through another of its kernel inodes (the
//! core's `Invalidator`, over fuser's notifier): attributes dropped at once; the growth
//! to the new size and the dropped pages on a worker per node, which the change waits
//! for when the core asks it to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::overlay::{Invalidator, Tail};

/// How long a change waits for another kernel inode of its file to take it in. Storing
/// the file's last byte and dropping pages take page locks of that inode, which a
/// request in flight there can hold: a read, answered by another worker soon (the core
/// does not ask to wait on an inode with a write in flight, see
/// `Overlay::others_changed`). The bound keeps a kernel that holds a lock for longer
/// from stalling the call; the change then lands just after it returns.
const NOTIFY_WAIT: Duration = Duration::from_millis(500);

/// A change for a node's worker: the end the node must grow to, and who waits.
struct Change {
    tail: Option<Tail>,
    done: crossbeam_channel::Sender<()>,
}

/// How long a node's worker stays for more changes (a writer's next write) before it
/// ends.
const LINGER: Duration = Duration::from_secs(1);

/// The workers telling the kernel of changes, by node, each fed by its channel. One
/// worker per node, because each waits for that node's page locks alone: a single queue
/// would make a change wait behind another node's, blocked on a page that the waiting
/// change's own write holds (two writers through two kernel inodes of a file then
/// stalled each other for the whole `NOTIFY_WAIT`, write after write).
struct Workers {
    notifier: fuser::Notifier,
    by_node: Mutex<HashMap<u64, crossbeam_channel::Sender<Change>>>,
}

impl Workers {
    /// Hands a change for `nodeid` to its worker, starting one if it has none.
    fn push(self: &Arc<Self>, nodeid: u64, c: Change) {
        let mut by_node = self.by_node.lock();
        // Sent under the lock: a worker leaves only under it, with its channel empty.
        let c = match by_node.get(&nodeid) {
            Some(tx) => match tx.send(c) {
                Ok(()) => return,
                Err(back) => back.0,
            },
            None => c,
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let _ = tx.send(c);
        by_node.insert(nodeid, tx);
        drop(by_node);
        let me = self.clone();
        let started = std::thread::Builder::new()
            .name("invalidate".into())
            .spawn(move || me.work(nodeid, rx));
        if let Err(e) = started {
            // Its attributes are dropped already: a read asks again, a mapping may not.
            tracing::warn!("cannot start a thread to drop node {nodeid:#x}'s pages: {e}");
            self.by_node.lock().remove(&nodeid);
        }
    }

    /// A node's worker: its changes in order, so the byte a growth stored goes with the
    /// pages of the same change, never after them.
    fn work(&self, nodeid: u64, rx: crossbeam_channel::Receiver<Change>) {
        let node = fuser::INodeNo(nodeid);
        loop {
            let Ok(c) = rx.recv_timeout(LINGER) else {
                let mut by_node = self.by_node.lock();
                if rx.is_empty() {
                    by_node.remove(&nodeid);
                    return;
                }
                continue;
            };
            if let Some(t) = c.tail {
                // Ends at the size: the kernel's size grows to it, if smaller.
                let _ = self.notifier.store(node, t.size - 1, &[t.last]);
            }
            let _ = self.notifier.inval_inode(node, 0, 0);
            let _ = c.done.send(());
        }
    }
}

/// The core's way to tell the kernel that another inode of an object changed. The
/// attributes go at once (no page lock is taken for them). The growth and the pages go
/// on the node's worker, which the call waits for when asked (`NOTIFY_WAIT`): they must
/// land before the call that changed the file returns, as a mapping asks the daemon
/// nothing while its pages are cached (it would read old bytes) and faults past the
/// inode's size with SIGBUS.
pub(super) fn invalidator(notifier: fuser::Notifier) -> Invalidator {
    let workers = Arc::new(Workers {
        notifier: notifier.clone(),
        by_node: Mutex::new(HashMap::new()),
    });
    Box::new(move |nodeid, tail, wait| {
        let _ = notifier.inval_inode(fuser::INodeNo(nodeid), -1, 0);
        let (done, landed) = crossbeam_channel::bounded(1);
        workers.push(nodeid, Change { tail, done });
        if wait && landed.recv_timeout(NOTIFY_WAIT).is_err() {
            tracing::debug!("node {nodeid:#x} takes a change in after the call returns");
        }
    })
}
