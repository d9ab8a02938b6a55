//! The pure core of a feed: the server's paths, Unix or Windows ([`ServerPath`]), mapped
//! onto the mount by `--map` prefixes ([`check_maps`], [`map_path`], and [`suggest_map`]
//! when none covers them), and the files to promote, each listed file followed by the next
//! ones of its directory ([`with_next`], natural order as `crate::policy` has it).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::cli::PathMap;

/// One file to promote: its path relative to MOUNTPOINT, and why, as the output says it
/// (`on deck`, `next up`, `resume`, `next after S01E02.mkv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub rel: PathBuf,
    pub why: String,
}

/// A path as a media server gives it, or a `--map` FROM: a Unix path (`/data/tv/x.mkv`),
/// or a Windows one: a drive (`D:\Media\x.mkv`, `d:/Media/x.mkv`) or a share
/// (`\\nas\media\x.mkv`; `//nas/media/x.mkv` too). Windows paths compare without
/// regard to case or slash direction, as Windows does; Unix paths byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPath {
    windows: bool,
    /// Unix: the components. Windows: the root first (`D:`, or `\\nas\media`: the share
    /// is part of it), then the components. Without empty and `.` components.
    comps: Vec<String>,
}

impl ServerPath {
    /// Reads `s`; the error says why it is no absolute path of either kind.
    pub fn parse(s: &str) -> Result<ServerPath, String> {
        let slash = |c: u8| c == b'/' || c == b'\\';
        let b = s.as_bytes();
        let (windows, root, rest) = if b.len() >= 2
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && b.get(2).is_none_or(|&c| slash(c))
        {
            (true, Some(s[..2].to_ascii_uppercase()), &s[2..])
        } else if b.len() > 2 && slash(b[0]) && slash(b[1]) && !slash(b[2]) {
            let mut it = s[2..].split(['/', '\\']);
            let (host, share) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if host.is_empty() || share.is_empty() {
                return Err(
                    "a Windows share path needs its host and share: \\\\HOST\\SHARE".into(),
                );
            }
            let skip = 2 + host.len() + 1 + share.len();
            (true, Some(format!("\\\\{host}\\{share}")), &s[skip..])
        } else if s.starts_with('/') {
            (false, None, s)
        } else {
            return Err("not an absolute path".into());
        };
        let mut comps: Vec<String> = root.into_iter().collect();
        let seps: &[char] = if windows { &['/', '\\'] } else { &['/'] };
        for c in rest.split(seps) {
            match c {
                "" | "." => {}
                ".." => return Err("contains '..'".into()),
                c => comps.push(c.to_string()),
            }
        }
        Ok(ServerPath { windows, comps })
    }

    /// How many of the first components are the root, which a map's FROM must hold.
    fn root_len(&self) -> usize {
        usize::from(self.windows)
    }

    /// Whether `prefix` covers this path: the same kind, and its components are this
    /// path's first ones (whole components: `/data/tv` does not cover `/data/tvshows`).
    fn starts_with(&self, prefix: &ServerPath) -> bool {
        self.windows == prefix.windows
            && prefix.comps.len() <= self.comps.len()
            && self.comps.iter().zip(&prefix.comps).all(|(a, b)| {
                if self.windows {
                    a.to_lowercase() == b.to_lowercase()
                } else {
                    a == b
                }
            })
    }

    /// The components after the first `n`, as a relative path.
    fn rest(&self, n: usize) -> PathBuf {
        self.comps[n..].iter().collect()
    }

    /// The path of the first `n` components, written as its server would.
    fn shown(&self, n: usize) -> String {
        if !self.windows {
            return format!("/{}", self.comps[..n].join("/"));
        }
        let mut s = self.comps[0].clone();
        if n == 1 && s.ends_with(':') {
            s.push('\\');
        }
        for c in &self.comps[1..n] {
            s.push('\\');
            s.push_str(c);
        }
        s
    }
}

/// A `--map`, checked: FROM read, TO under MOUNTPOINT.
#[derive(Debug, Clone)]
pub struct Map {
    from: ServerPath,
    /// FROM as given, for messages.
    from_text: String,
    to: PathBuf,
}

/// Reads and checks the maps against MOUNTPOINT (absolute): every FROM an absolute Unix or
/// Windows path, every TO at or under MOUNTPOINT, no FROM given twice. The error is one
/// line for a usage error.
pub fn check_maps(maps: &[PathMap], mount: &Path) -> Result<Vec<Map>, String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in maps {
        let from = ServerPath::parse(&m.from).map_err(|why| {
            format!(
                "--map {}={}: FROM {why}: give the server's folder as it writes it, e.g. \
                 /data/tv, D:\\Media or \\\\nas\\media",
                m.from,
                m.to.display()
            )
        })?;
        let to = normal(&m.to);
        if !to.starts_with(mount) {
            return Err(format!(
                "--map {}={}: {} is not under MOUNTPOINT {}: map the server's paths onto the \
                 mount",
                m.from,
                m.to.display(),
                m.to.display(),
                mount.display()
            ));
        }
        let key = (
            from.windows,
            if from.windows {
                from.comps.iter().map(|c| c.to_lowercase()).collect()
            } else {
                from.comps.clone()
            },
        );
        if !seen.insert(key) {
            return Err(format!(
                "--map {}=...: FROM given twice: give each prefix one TO",
                m.from
            ));
        }
        out.push(Map {
            from,
            from_text: m.from.clone(),
            to,
        });
    }
    Ok(out)
}

/// `p` without `.` components or repeated slashes (`Path::components` drops them).
fn normal(p: &Path) -> PathBuf {
    p.components().collect()
}

/// Why a server's path is not promoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmapped {
    /// No `--map` covers it, and it is not under MOUNTPOINT: a map is missing.
    Uncovered(String),
    /// Anything else: not absolute, `..`, MOUNTPOINT itself, outside it.
    Bad(String),
}

impl fmt::Display for Unmapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmapped::Uncovered(why) | Unmapped::Bad(why) => f.write_str(why),
        }
    }
}

/// Where the server's `path` is under MOUNTPOINT (`mount`, absolute), relative to it. The
/// map with the longest matching FROM (whole components) replaces its prefix, and the rest
/// of a Windows path's `\` become `/`; a Unix path no map covers is taken as it is, which
/// holds where the server sees the mount at the same path.
pub fn map_path(maps: &[Map], mount: &Path, path: &str) -> Result<PathBuf, Unmapped> {
    let p = ServerPath::parse(path).map_err(Unmapped::Bad)?;
    let best = maps
        .iter()
        .filter(|m| p.starts_with(&m.from))
        .max_by_key(|m| m.from.comps.len());
    let mapped = match best {
        Some(m) => normal(&m.to.join(p.rest(m.from.comps.len()))),
        None if p.windows => {
            return Err(Unmapped::Uncovered(
                "a Windows path, and no --map covers it".into(),
            ));
        }
        None => Path::new("/").join(p.rest(0)),
    };
    match mapped.strip_prefix(mount) {
        Ok(rel) if rel.as_os_str().is_empty() => Err(Unmapped::Bad(format!(
            "it is MOUNTPOINT {} itself, not a file",
            mount.display()
        ))),
        Ok(rel) => Ok(rel.to_path_buf()),
        Err(_) => Err(match best {
            Some(m) => Unmapped::Bad(format!(
                "--map {}={} puts it at {}, outside MOUNTPOINT {}",
                m.from_text,
                m.to.display(),
                mapped.display(),
                mount.display()
            )),
            None => Unmapped::Uncovered(format!(
                "no --map covers it and it is not under MOUNTPOINT {}",
                mount.display()
            )),
        }),
    }
}

/// The `--map` that would put the server's `path` onto a file under `mount`: the longest
/// tail of its components that `exists` under `mount` (asked once per tail, longest
/// first), and the server's folder before that tail as FROM. `None` if no tail exists, or
/// `path` is no absolute path.
pub fn suggest_map(path: &str, mount: &Path, exists: impl Fn(&Path) -> bool) -> Option<String> {
    let p = ServerPath::parse(path).ok()?;
    (p.root_len()..p.comps.len())
        .find(|&n| exists(&mount.join(p.rest(n))))
        .map(|n| format!("--map '{}={}'", p.shown(n), mount.display()))
}

/// `files` in their order, each followed by the `next` regular files after it in its
/// directory (same extension, natural name order: `crate::policy::next_files`), each file
/// once. `list` gives the names of a directory's regular files (relative to MOUNTPOINT) and
/// is asked once per directory; a directory it cannot list adds no next files, and its error
/// is returned beside the plan, one line each.
pub fn with_next(
    files: &[Wanted],
    next: usize,
    mut list: impl FnMut(&Path) -> io::Result<Vec<OsString>>,
) -> (Vec<Wanted>, Vec<String>) {
    let mut listings: HashMap<PathBuf, Option<Vec<OsString>>> = HashMap::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for f in files {
        if seen.insert(f.rel.clone()) {
            out.push(f.clone());
        }
        let (Some(name), true) = (f.rel.file_name(), next > 0) else {
            continue;
        };
        let dir = f.rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let names = listings
            .entry(dir.clone())
            .or_insert_with(|| match list(&dir) {
                Ok(n) => Some(n),
                Err(e) => {
                    errors.push(format!(
                        "cannot list {} for the files after {}: {e}",
                        dir.display(),
                        name.to_string_lossy()
                    ));
                    None
                }
            });
        let Some(names) = names else { continue };
        let names: Vec<&std::ffi::OsStr> = names.iter().map(OsString::as_os_str).collect();
        for n in crate::policy::next_files(name, &names, next) {
            let rel = dir.join(n);
            if seen.insert(rel.clone()) {
                out.push(Wanted {
                    rel,
                    why: format!("next after {}", name.to_string_lossy()),
                });
            }
        }
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(pairs: &[(&str, &str)]) -> Vec<PathMap> {
        pairs
            .iter()
            .map(|(f, t)| PathMap {
                from: f.to_string(),
                to: t.into(),
            })
            .collect()
    }

    /// Maps as given, read but not checked (a TO may lie outside the mount).
    fn maps(pairs: &[(&str, &str)]) -> Vec<Map> {
        given(pairs)
            .into_iter()
            .map(|m| Map {
                from: ServerPath::parse(&m.from).unwrap(),
                from_text: m.from,
                to: normal(&m.to),
            })
            .collect()
    }

    #[test]
    fn the_longest_prefix_wins_by_whole_components() {
        let m = maps(&[
            ("/data", "/mnt/media/misc"),
            ("/data/tv", "/mnt/media/TV"),
            ("/data/tv/Kids", "/mnt/media/Kids/"),
            ("/movies/", "/mnt/media/./Movies"),
        ]);
        let mount = Path::new("/mnt/media");
        let ok = |p: &str| map_path(&m, mount, p).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(
            ok("/data/tv/Show/S01E01.mkv"),
            Path::new("TV/Show/S01E01.mkv")
        );
        assert_eq!(ok("/data/tv/Kids/a.mkv"), Path::new("Kids/a.mkv"));
        assert_eq!(ok("/data/tvshows/a.mkv"), Path::new("misc/tvshows/a.mkv"));
        assert_eq!(ok("/data//tv/./x.mkv"), Path::new("TV/x.mkv"));
        assert_eq!(
            ok("/movies/M (2020)/M.mkv"),
            Path::new("Movies/M (2020)/M.mkv")
        );
        // Unix paths are matched byte for byte, and a backslash is part of a name there.
        assert!(matches!(
            map_path(&m, mount, "/DATA/tv/a.mkv"),
            Err(Unmapped::Uncovered(_))
        ));
        assert_eq!(ok("/data/tv/a\\b.mkv"), Path::new("TV/a\\b.mkv"));
        // Already under MOUNTPOINT: the server sees the mount where it is.
        assert_eq!(ok("/mnt/media/Other/o.mkv"), Path::new("Other/o.mkv"));

        let err = |p: &str| map_path(&m, mount, p).unwrap_err();
        assert!(
            matches!(err("/srv/x.mkv"), Unmapped::Uncovered(ref e) if e.contains("no --map covers it")),
            "{}",
            err("/srv/x.mkv")
        );
        assert!(matches!(err("/mnt/mediax/a.mkv"), Unmapped::Uncovered(_)));
        assert!(matches!(err("D:\\Media\\a.mkv"), Unmapped::Uncovered(_)));
        assert!(matches!(err("relative/a.mkv"), Unmapped::Bad(ref e) if e.contains("absolute")));
        assert!(err("/data/tv/../../etc/shadow").to_string().contains(".."));
        assert!(err("/mnt/media").to_string().contains("itself"));
        // A map's own FROM is its TO, a directory here, which the runner skips.
        assert_eq!(ok("/data/tv"), Path::new("TV"));

        // A map whose TO lies outside the mount puts every path it covers outside.
        let outside = maps(&[("/data", "/elsewhere")]);
        let e = map_path(&outside, mount, "/data/a.mkv").unwrap_err();
        assert!(
            matches!(e, Unmapped::Bad(ref w) if w.contains("outside MOUNTPOINT")),
            "{e}"
        );
    }

    #[test]
    fn windows_paths_match_without_regard_to_case_or_slashes() {
        let m = maps(&[
            ("D:\\Media", "/mnt/media"),
            ("d:/media/TV Shows/", "/mnt/media/TV"),
            ("E:\\", "/mnt/media/E"),
            ("\\\\NAS\\Films", "/mnt/media/Movies"),
            ("/data", "/mnt/media/unix"),
        ]);
        let mount = Path::new("/mnt/media");
        let ok = |p: &str| map_path(&m, mount, p).unwrap_or_else(|e| panic!("{p}: {e}"));
        for (server, here) in [
            ("D:\\Media\\Kids\\k1.mkv", "Kids/k1.mkv"),
            ("d:\\MEDIA\\Kids\\k1.mkv", "Kids/k1.mkv"),
            ("D:/Media/Kids/k1.mkv", "Kids/k1.mkv"),
            ("D:\\Media/Kids\\\\k1.mkv", "Kids/k1.mkv"),
            (
                "D:\\Media\\TV Shows\\Show\\S01E01.mkv",
                "TV/Show/S01E01.mkv",
            ),
            (
                "D:\\media\\tv shows\\Show\\S01E01.mkv",
                "TV/Show/S01E01.mkv",
            ),
            ("D:\\Media\\TV Showsx\\a.mkv", "TV Showsx/a.mkv"),
            ("e:\\x.mkv", "E/x.mkv"),
            ("E:/.\\x.mkv", "E/x.mkv"),
            (
                "\\\\nas\\films\\Film (2020)\\Film.mkv",
                "Movies/Film (2020)/Film.mkv",
            ),
            (
                "//NAS/Films/Film (2020)/Film.mkv",
                "Movies/Film (2020)/Film.mkv",
            ),
            ("\\\\nas/FILMS\\F.mkv", "Movies/F.mkv"),
            ("/data/x.mkv", "unix/x.mkv"),
            // Names keep their case and everything but slashes.
            ("D:\\Media\\Ça & Là\\Ep: 1.mkv", "Ça & Là/Ep: 1.mkv"),
        ] {
            assert_eq!(ok(server), Path::new(here), "{server}");
        }
        let err = |p: &str| map_path(&m, mount, p).unwrap_err();
        // Another drive, another share, or a Unix path under a Windows-looking name.
        assert!(matches!(err("C:\\Media\\a.mkv"), Unmapped::Uncovered(_)));
        assert!(matches!(
            err("\\\\nas\\other\\a.mkv"),
            Unmapped::Uncovered(_)
        ));
        assert!(matches!(
            err("\\\\other\\Films\\a.mkv"),
            Unmapped::Uncovered(_)
        ));
        assert!(
            matches!(err("D:\\Media\\..\\secret.mkv"), Unmapped::Bad(ref e) if e.contains(".."))
        );
        assert!(matches!(err("D:\\Media"), Unmapped::Bad(ref e) if e.contains("itself")));
        assert!(matches!(err("\\\\nas"), Unmapped::Bad(ref e) if e.contains("host and share")));
        assert!(matches!(err("D:Media\\a.mkv"), Unmapped::Bad(_)));
        assert!(matches!(err("Media\\a.mkv"), Unmapped::Bad(_)));
    }

    #[test]
    fn maps_are_checked_against_the_mountpoint() {
        let mount = Path::new("/mnt/media");
        assert!(check_maps(&given(&[("/data", "/mnt/media/./tv/")]), mount).is_ok());
        assert!(check_maps(&given(&[("/data", "/mnt/media")]), mount).is_ok());
        assert!(
            check_maps(
                &given(&[("D:\\", "/mnt/media"), ("\\\\h\\s", "/mnt/media")]),
                mount
            )
            .is_ok()
        );
        let e = check_maps(&given(&[("/data", "/mnt/mediax")]), mount).unwrap_err();
        assert!(e.contains("is not under MOUNTPOINT /mnt/media"), "{e}");
        for twice in [
            [("/a", "/mnt/media/x"), ("/a/", "/mnt/media/y")],
            [("D:\\Media", "/mnt/media/x"), ("d:/MEDIA/", "/mnt/media/y")],
            [("\\\\nas\\m", "/mnt/media/x"), ("//NAS/M", "/mnt/media/y")],
        ] {
            let e = check_maps(&given(&twice), mount).unwrap_err();
            assert!(e.contains("given twice"), "{e}");
        }
        for bad in ["data", "D:Media", "\\\\nas", "\\\\nas\\", "/a/../b", "C"] {
            let e = check_maps(&given(&[(bad, "/mnt/media")]), mount).unwrap_err();
            assert!(
                e.starts_with(&format!("--map {bad}=/mnt/media: FROM ")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_missing_map_is_suggested_from_what_exists_under_the_mount() {
        let mount = Path::new("/mnt/media");
        let there = |p: &Path| p == Path::new("/mnt/media/TV/Show/x.mkv");
        assert_eq!(
            suggest_map("D:\\Media\\TV\\Show\\x.mkv", mount, there).as_deref(),
            Some("--map 'D:\\Media=/mnt/media'")
        );
        assert_eq!(
            suggest_map("e:/TV/Show/x.mkv", mount, there).as_deref(),
            Some("--map 'E:\\=/mnt/media'")
        );
        assert_eq!(
            suggest_map("\\\\nas\\share\\TV\\Show\\x.mkv", mount, there).as_deref(),
            Some("--map '\\\\nas\\share=/mnt/media'")
        );
        assert_eq!(
            suggest_map("/data/media/TV/Show/x.mkv", mount, there).as_deref(),
            Some("--map '/data/media=/mnt/media'")
        );
        assert_eq!(suggest_map("/data/other.mkv", mount, there), None);
        assert_eq!(suggest_map("nonsense", mount, |_| true), None);
        // The longest tail wins, and each tail is asked once.
        let asked = std::cell::RefCell::new(Vec::new());
        let s = suggest_map("/a/b/c.mkv", mount, |p| {
            asked.borrow_mut().push(p.to_path_buf());
            p.ends_with("c.mkv")
        });
        assert_eq!(s.as_deref(), Some("--map '/=/mnt/media'"));
        assert_eq!(asked.borrow().len(), 1);
    }

    fn wanted(rel: &str, why: &str) -> Wanted {
        Wanted {
            rel: rel.into(),
            why: why.into(),
        }
    }

    #[test]
    fn next_files_follow_each_file_once() {
        let season: Vec<OsString> = [
            "S01E10.mkv",
            "S01E02.mkv",
            "S01E01.mkv",
            "S01E03.mkv",
            "S01E02.srt",
            "S01E09.mkv",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let mut asked = Vec::new();
        let files = [
            wanted("Show/S01E02.mkv", "on deck"),
            wanted("Show/S01E03.mkv", "resume"),
            wanted("Movies/M.mkv", "on deck"),
            wanted("Gone/x.mkv", "next up"),
        ];
        let (plan, errors) = with_next(&files, 2, |dir| {
            asked.push(dir.to_path_buf());
            match dir.to_str() {
                Some("Show") => Ok(season.clone()),
                Some("Movies") => Ok(vec!["M.mkv".into()]),
                _ => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            }
        });
        let got: Vec<(&str, &str)> = plan
            .iter()
            .map(|w| (w.rel.to_str().unwrap(), w.why.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("Show/S01E02.mkv", "on deck"),
                ("Show/S01E03.mkv", "next after S01E02.mkv"),
                ("Show/S01E09.mkv", "next after S01E02.mkv"),
                ("Show/S01E10.mkv", "next after S01E03.mkv"),
                ("Movies/M.mkv", "on deck"),
                ("Gone/x.mkv", "next up"),
            ]
        );
        // One listing per directory.
        assert_eq!(
            asked,
            [Path::new("Show"), Path::new("Movies"), Path::new("Gone")]
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("cannot list Gone"), "{errors:?}");

        let (plan, _) = with_next(&files[..1], 0, |_| panic!("--next 0 lists nothing"));
        assert_eq!(plan, files[..1]);
    }
}
