//! Locks across the kernel inodes of one file. A writer opened beside a passthrough
//! reader gets a kernel inode of its own (see `overlay::file`); locks taken through
//! either must meet those taken through the other exactly as on a plain directory:
//! fcntl and lockf record locks per process, flock per open file, the two kinds
//! independent of each other, released on close as POSIX and flock say, F_SETLKW
//! waiting and interruptible, F_GETLK naming the holder. Every test sets a lock through
//! one inode and checks it through the other (the daemon holds them on SOURCE, see
//! `overlay::locks`; without that the kernel kept them per inode and none of these held).

use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use crate::common::{
    TestMount, cpath, errno, eventually, in_child, pattern, require_passthrough, with_cached_file,
};

/// A mount whose file `f` is open twice by this process: `reader`, read-only and served
/// by passthrough from its cached copy, and `writer`, read-write, opened after it and so
/// on a kernel inode of its own.
fn reader_and_writer() -> (TestMount, fs::File, fs::File) {
    let m = with_cached_file("f", &pattern(64 << 10, 52));
    require_passthrough(&m);
    let reader = fs::File::open(m.path("f")).unwrap();
    let writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    assert_ne!(
        reader.metadata().unwrap().ino(),
        writer.metadata().unwrap().ino(),
        "the writer is on the reader's kernel inode: this test needs two"
    );
    (m, reader, writer)
}

/// fcntl(`cmd`) with a `typ` lock on `len` bytes at `start` (0: to the end): 0 or the
/// errno; F_GETLK fills `fl`. Async-signal-safe.
fn fcntl_lock(fd: RawFd, cmd: i32, typ: i32, start: i64, len: i64, fl: &mut libc::flock) -> i32 {
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    fl.l_pid = 0;
    // SAFETY: fl is a valid struct flock that outlives the call.
    if unsafe { libc::fcntl(fd, cmd, fl as *mut libc::flock) } == 0 {
        0
    } else {
        errno()
    }
}

/// F_SETLK of a `typ` lock: 0 or the errno. Async-signal-safe.
fn setlk(fd: RawFd, typ: i32, start: i64, len: i64) -> i32 {
    // SAFETY: libc::flock is plain old data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fcntl_lock(fd, libc::F_SETLK, typ, start, len, &mut fl)
}

/// flock(2): 0 or the errno. Async-signal-safe.
fn flock(fd: RawFd, op: i32) -> i32 {
    // SAFETY: plain syscall.
    if unsafe { libc::flock(fd, op) } == 0 {
        0
    } else {
        errno()
    }
}

/// In a child process (another lock owner): `f` on a new descriptor of `path` opened
/// with `flags` (it lands on the writer's kernel inode: the name leads there while the
/// reader is open).
fn child_opening(m: &TestMount, flags: i32, f: fn(RawFd) -> i32) -> i32 {
    let c = cpath(&m.path("f"));
    in_child(None, move || {
        // SAFETY: async-signal-safe calls on a prepared path.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            return errno();
        }
        f(fd)
    })
}

/// In a child process (another POSIX lock owner; the same open file, so the same flock
/// owner): `f` on the descriptor `fd` it inherits.
fn child_on_fd(fd: RawFd, f: fn(RawFd) -> i32) -> i32 {
    in_child(None, move || f(fd))
}

#[test]
fn fcntl_write_lock_holds_against_another_process_across_a_passthrough_reader_and_a_later_writer() {
    crate::require_mount!();
    let (_m, reader, writer) = reader_and_writer();
    assert_eq!(setlk(writer.as_raw_fd(), libc::F_WRLCK, 0, 100), 0);
    assert_eq!(
        child_on_fd(reader.as_raw_fd(), |fd| setlk(fd, libc::F_RDLCK, 10, 10)),
        libc::EAGAIN,
        "another process took a read lock, through the passthrough reader's inode, inside \
         a write lock set through the writer's"
    );
    assert_eq!(
        child_on_fd(reader.as_raw_fd(), |fd| setlk(fd, libc::F_RDLCK, 100, 10)),
        0,
        "a read lock past the write lock's range"
    );
    // And the other way: the reader's read lock holds against a writer's write lock.
    assert_eq!(setlk(reader.as_raw_fd(), libc::F_RDLCK, 200, 100), 0);
    assert_eq!(
        child_on_fd(writer.as_raw_fd(), |fd| setlk(fd, libc::F_WRLCK, 250, 1)),
        libc::EAGAIN,
        "another process took a write lock over the passthrough reader's read lock"
    );
}

#[test]
fn lockf_holds_against_another_process_across_a_passthrough_reader_and_a_later_writer() {
    crate::require_mount!();
    let (m, reader, writer) = reader_and_writer();
    // A read lock through the passthrough reader's inode; lockf (a write lock from the
    // offset to the end) through the writer's.
    assert_eq!(setlk(reader.as_raw_fd(), libc::F_RDLCK, 0, 100), 0);
    let tlock = |fd: RawFd| {
        // SAFETY: plain libc call.
        if unsafe { libc::lockf(fd, libc::F_TLOCK, 0) } == 0 {
            0
        } else {
            errno()
        }
    };
    assert_eq!(
        child_opening(&m, libc::O_RDWR, tlock),
        libc::EAGAIN,
        "lockf F_TLOCK over a passthrough reader's read lock"
    );
    assert_eq!(setlk(reader.as_raw_fd(), libc::F_UNLCK, 0, 0), 0);
    // lockf F_LOCK by this process through the writer's inode; a test through the
    // reader's (glibc answers EACCES for a lock of another process).
    // SAFETY: plain libc call.
    assert_eq!(
        unsafe { libc::lockf(writer.as_raw_fd(), libc::F_LOCK, 0) },
        0
    );
    assert_eq!(
        child_on_fd(reader.as_raw_fd(), |fd| {
            // SAFETY: plain libc call.
            if unsafe { libc::lockf(fd, libc::F_TEST, 0) } == 0 {
                0
            } else {
                errno()
            }
        }),
        libc::EACCES,
        "lockf F_TEST through the passthrough reader's inode missed the writer's lockf"
    );
}

#[test]
fn flock_ex_holds_against_lock_nb_across_a_passthrough_reader_and_a_later_writer() {
    crate::require_mount!();
    let (m, reader, writer) = reader_and_writer();
    assert_eq!(flock(reader.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
    assert_eq!(
        flock(writer.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB),
        libc::EWOULDBLOCK,
        "the writer's open file took a shared flock beside the reader's exclusive one"
    );
    assert_eq!(
        child_opening(&m, libc::O_RDWR, |fd| flock(
            fd,
            libc::LOCK_EX | libc::LOCK_NB
        )),
        libc::EWOULDBLOCK,
        "another process's open took the passthrough reader's flock"
    );
    assert_eq!(flock(reader.as_raw_fd(), libc::LOCK_UN), 0);
    assert_eq!(flock(writer.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
    assert_eq!(
        flock(reader.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB),
        libc::EWOULDBLOCK,
        "the reader took a shared flock beside the writer's exclusive one"
    );
}

#[test]
fn posix_locks_go_when_their_owner_closes_any_descriptor_of_the_file() {
    crate::require_mount!();
    let (m, reader, writer) = reader_and_writer();
    assert_eq!(setlk(writer.as_raw_fd(), libc::F_WRLCK, 0, 100), 0);
    let contend = |fd: RawFd| setlk(fd, libc::F_WRLCK, 10, 10);
    assert_eq!(child_opening(&m, libc::O_RDWR, contend), libc::EAGAIN);
    // Another process closing its descriptor of the file releases nothing of ours.
    assert_eq!(child_on_fd(reader.as_raw_fd(), |_| 0), 0);
    assert_eq!(child_opening(&m, libc::O_RDWR, contend), libc::EAGAIN);
    // Closing the reader, on the other kernel inode, releases the lock set through the
    // writer's: POSIX locks are the process's, and any close of the file drops them.
    drop(reader);
    assert_eq!(
        child_opening(&m, libc::O_RDWR, contend),
        0,
        "a POSIX lock outlived its owner's close of another descriptor of the file"
    );
    drop(writer);
}

#[test]
fn flock_goes_when_its_open_file_is_closed_and_not_before() {
    crate::require_mount!();
    let (m, reader, writer) = reader_and_writer();
    assert_eq!(flock(reader.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
    let contend = |fd: RawFd| flock(fd, libc::LOCK_EX | libc::LOCK_NB);
    // Unlike a POSIX lock, an flock stays when another descriptor of the file closes
    // (here the writer's, on the other kernel inode).
    drop(writer);
    assert_eq!(child_opening(&m, libc::O_RDWR, contend), libc::EWOULDBLOCK);
    // A child inheriting the descriptor shares the open file: its exit releases nothing.
    assert_eq!(child_on_fd(reader.as_raw_fd(), |_| 0), 0);
    assert_eq!(child_opening(&m, libc::O_RDWR, contend), libc::EWOULDBLOCK);
    // The open file's last close releases it (the kernel tells the daemon just after
    // close returns).
    drop(reader);
    eventually("the flock to go with its open file", &m, || {
        child_opening(&m, libc::O_RDWR, contend) == 0
    });
}

#[test]
fn flock_and_fcntl_locks_of_one_process_do_not_conflict() {
    crate::require_mount!();
    let (m, reader, writer) = reader_and_writer();
    assert_eq!(setlk(writer.as_raw_fd(), libc::F_WRLCK, 0, 0), 0);
    assert_eq!(
        flock(reader.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
        0,
        "an flock conflicted with this process's own fcntl lock"
    );
    assert_eq!(
        setlk(reader.as_raw_fd(), libc::F_RDLCK, 0, 100),
        0,
        "an fcntl lock conflicted with this process's own flock"
    );
    // Both are held, each against its own kind.
    assert_eq!(
        child_opening(&m, libc::O_RDWR, |fd| flock(
            fd,
            libc::LOCK_SH | libc::LOCK_NB
        )),
        libc::EWOULDBLOCK
    );
    assert_eq!(
        child_opening(&m, libc::O_RDWR, |fd| setlk(fd, libc::F_RDLCK, 500, 1)),
        libc::EAGAIN
    );
}

#[test]
fn f_getlk_reports_the_holders_pid_and_range() {
    crate::require_mount!();
    let (_m, reader, writer) = reader_and_writer();
    assert_eq!(setlk(writer.as_raw_fd(), libc::F_WRLCK, 10, 100), 0);
    // 0 when F_GETLK through the reader's inode names this process's write lock on
    // 10..110; else what differed.
    let code = child_on_fd(reader.as_raw_fd(), |fd| {
        // SAFETY: libc::flock is plain old data.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        let e = fcntl_lock(fd, libc::F_GETLK, libc::F_RDLCK, 0, 0, &mut fl);
        if e != 0 {
            return e;
        }
        if fl.l_type as i32 != libc::F_WRLCK {
            return 1000 + fl.l_type as i32;
        }
        if fl.l_start != 10 || fl.l_len != 100 {
            return 2000;
        }
        // SAFETY: plain libc call.
        if fl.l_pid != unsafe { libc::getppid() } {
            return 3000;
        }
        0
    });
    let what = match code {
        0 => "",
        c if c == 1000 + libc::F_UNLCK => "no lock",
        2000 => "another range",
        3000 => "another pid",
        _ => "an error",
    };
    assert_eq!(
        code, 0,
        "F_GETLK through the reader's inode reported {what}"
    );
}

#[test]
fn locks_on_source_itself_meet_locks_through_the_mount() {
    crate::require_mount!();
    let (m, reader, _writer) = reader_and_writer();
    let direct = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.source.join("f"))
        .unwrap();
    assert_eq!(setlk(direct.as_raw_fd(), libc::F_WRLCK, 0, 10), 0);
    assert_eq!(
        child_on_fd(reader.as_raw_fd(), |fd| setlk(fd, libc::F_RDLCK, 5, 1)),
        libc::EAGAIN,
        "a lock through the mount beside a process's lock on SOURCE"
    );
    let code = child_on_fd(reader.as_raw_fd(), |fd| {
        // SAFETY: libc::flock is plain old data.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        let e = fcntl_lock(fd, libc::F_GETLK, libc::F_RDLCK, 0, 0, &mut fl);
        if e != 0 {
            return e;
        }
        // SAFETY: plain libc call.
        let ours = fl.l_pid == unsafe { libc::getppid() };
        if fl.l_type as i32 == libc::F_WRLCK && fl.l_start == 0 && fl.l_len == 10 && ours {
            0
        } else {
            1000
        }
    });
    assert_eq!(
        code, 0,
        "F_GETLK did not report the lock on SOURCE and its pid"
    );
    // And the other way: a lock through the mount holds against one on SOURCE.
    assert_eq!(setlk(reader.as_raw_fd(), libc::F_RDLCK, 100, 1), 0);
    let src = m.source.join("f");
    let c = cpath(&src);
    let direct_in_child = in_child(None, move || {
        // SAFETY: async-signal-safe calls on a prepared path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            return errno();
        }
        setlk(fd, libc::F_WRLCK, 100, 1)
    });
    assert_eq!(
        direct_in_child,
        libc::EAGAIN,
        "a process locking SOURCE directly took a range locked through the mount"
    );
}

/// A forked child, killed and reaped on drop if still running.
struct Forked(libc::pid_t);

impl Forked {
    /// Forks a child that runs `f` (async-signal-safe only) and exits with its result.
    fn run(f: impl FnOnce() -> i32) -> Forked {
        // SAFETY: the child calls only async-signal-safe functions, then _exit.
        match unsafe { libc::fork() } {
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                let code = f();
                // SAFETY: _exit has no preconditions.
                unsafe { libc::_exit(code) }
            }
            pid => Forked(pid),
        }
    }

    /// The child's wait status once it has ended, if it does within `limit`.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        loop {
            let mut st = 0;
            // SAFETY: st is a live local.
            match unsafe { libc::waitpid(self.0, &mut st, libc::WNOHANG) } {
                0 if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                0 => return None,
                _ => {
                    self.0 = 0;
                    return Some(st);
                }
            }
        }
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: our own child.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
            let _ = self.wait(Duration::from_secs(10));
        }
    }
}

/// F_SETLKW of a read lock on the first 10 bytes of `fd`, in a child: it exits with 0
/// or the errno.
fn child_waiting_for_a_lock(fd: RawFd) -> Forked {
    Forked::run(move || {
        // SAFETY: libc::flock is plain old data.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fcntl_lock(fd, libc::F_SETLKW, libc::F_RDLCK, 0, 10, &mut fl)
    })
}

#[test]
fn f_setlkw_waits_until_the_holder_unlocks_then_succeeds() {
    crate::require_mount!();
    let (_m, reader, writer) = reader_and_writer();
    assert_eq!(setlk(writer.as_raw_fd(), libc::F_WRLCK, 0, 100), 0);
    let mut child = child_waiting_for_a_lock(reader.as_raw_fd());
    assert_eq!(
        child.wait(Duration::from_millis(500)),
        None,
        "F_SETLKW through the reader's inode returned while the writer's lock was held"
    );
    assert_eq!(setlk(writer.as_raw_fd(), libc::F_UNLCK, 0, 0), 0);
    let st = child.wait(Duration::from_secs(5));
    assert!(
        st.is_some(),
        "F_SETLKW still waits after the holder unlocked"
    );
    let st = st.unwrap();
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "F_SETLKW failed: wait status {st:#x}"
    );
}

#[test]
fn a_child_waiting_in_f_setlkw_is_killed_promptly_and_interrupted_by_signals() {
    crate::require_mount!();
    let (_m, reader, writer) = reader_and_writer();
    assert_eq!(setlk(writer.as_raw_fd(), libc::F_WRLCK, 0, 100), 0);
    let mut child = child_waiting_for_a_lock(reader.as_raw_fd());
    assert_eq!(child.wait(Duration::from_millis(300)), None, "no wait");
    // SAFETY: our own child.
    unsafe { libc::kill(child.0, libc::SIGKILL) };
    let st = child.wait(Duration::from_secs(2));
    assert!(
        st.is_some_and(|st| libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL),
        "a child killed while waiting in F_SETLKW did not die within 2 s: {st:?}"
    );
    // A signal with a handler (no SA_RESTART) ends the wait with EINTR, as natively.
    let fd = reader.as_raw_fd();
    let mut child = Forked::run(move || {
        extern "C" fn on_alarm(_: libc::c_int) {}
        // SAFETY: async-signal-safe calls; sa is zeroed, then filled.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_alarm as *const () as usize;
            libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
            libc::alarm(1);
        }
        // SAFETY: libc::flock is plain old data.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fcntl_lock(fd, libc::F_SETLKW, libc::F_RDLCK, 0, 10, &mut fl)
    });
    let st = child.wait(Duration::from_secs(5));
    assert!(
        st.is_some_and(|st| libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == libc::EINTR),
        "F_SETLKW interrupted by SIGALRM: wait status {st:?} (want exit {})",
        libc::EINTR
    );
}
