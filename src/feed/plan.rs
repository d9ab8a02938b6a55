//! The pure core of a feed: the server's paths mapped onto the mount by `--map` prefixes
//! ([`check_maps`], [`map_path`]), and the files to promote, each listed file followed by
//! the next ones of its directory ([`with_next`], natural order as `crate::policy` has it).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::cli::PathMap;

/// One file to promote: its path relative to MOUNTPOINT, and why, as the output says it
/// (`on deck`, `next up`, `resume`, `next after S01E02.mkv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub rel: PathBuf,
    pub why: String,
}

/// Checks the maps against MOUNTPOINT (absolute): every TO must be at or under it, and no
/// FROM given twice. The error is one line for a usage error.
pub fn check_maps(maps: &[PathMap], mount: &Path) -> Result<(), String> {
    let mut seen = HashSet::new();
    for m in maps {
        let to = normal(&m.to);
        if !to.starts_with(mount) {
            return Err(format!(
                "--map {}={}: {} is not under MOUNTPOINT {}: map the server's paths onto the \
                 mount",
                m.from.display(),
                m.to.display(),
                m.to.display(),
                mount.display()
            ));
        }
        if !seen.insert(normal(&m.from)) {
            return Err(format!(
                "--map {}=...: FROM given twice: give each prefix one TO",
                m.from.display()
            ));
        }
    }
    Ok(())
}

/// `p` without `.` components or repeated slashes (`Path::components` drops them).
fn normal(p: &Path) -> PathBuf {
    p.components().collect()
}

/// Where the server's `path` is under MOUNTPOINT (`mount`, absolute), relative to it. The
/// map with the longest matching FROM (whole components: `/data/tv` does not cover
/// `/data/tvshows`) replaces its prefix; a path no map covers is taken as it is, which
/// holds where the server sees the mount at the same path. The error says why the path is
/// skipped.
pub fn map_path(maps: &[PathMap], mount: &Path, path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err("not an absolute path".into());
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err("contains '..'".into());
    }
    let best = maps
        .iter()
        .filter(|m| p.starts_with(&m.from))
        .max_by_key(|m| m.from.components().count());
    let mapped = match best {
        Some(m) => match p.strip_prefix(&m.from) {
            Ok(rest) if rest.as_os_str().is_empty() => normal(&m.to),
            Ok(rest) => normal(&m.to.join(rest)),
            Err(_) => normal(p),
        },
        None => normal(p),
    };
    match mapped.strip_prefix(mount) {
        Ok(rel) if rel.as_os_str().is_empty() => Err(format!(
            "it is MOUNTPOINT {} itself, not a file",
            mount.display()
        )),
        Ok(rel) => Ok(rel.to_path_buf()),
        Err(_) => Err(match best {
            Some(m) => format!(
                "--map {}={} puts it at {}, outside MOUNTPOINT {}",
                m.from.display(),
                m.to.display(),
                mapped.display(),
                mount.display()
            ),
            None => format!(
                "no --map covers it and it is not under MOUNTPOINT {}",
                mount.display()
            ),
        }),
    }
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

    fn maps(pairs: &[(&str, &str)]) -> Vec<PathMap> {
        pairs
            .iter()
            .map(|(f, t)| PathMap {
                from: f.into(),
                to: t.into(),
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
        // Already under MOUNTPOINT: the server sees the mount where it is.
        assert_eq!(ok("/mnt/media/Other/o.mkv"), Path::new("Other/o.mkv"));

        let err = |p: &str| map_path(&m, mount, p).unwrap_err();
        assert!(
            err("/srv/x.mkv").contains("no --map covers it"),
            "{}",
            err("/srv/x.mkv")
        );
        assert!(err("/mnt/mediax/a.mkv").contains("no --map covers it"));
        assert!(err("relative/a.mkv").contains("absolute"));
        assert!(err("/data/tv/../../etc/shadow").contains(".."));
        assert!(err("/mnt/media").contains("itself"));
        // A map's own FROM is its TO, a directory here, which the runner skips.
        assert_eq!(ok("/data/tv"), Path::new("TV"));

        // A map whose TO lies outside the mount puts every path it covers outside.
        let outside = maps(&[("/data", "/elsewhere")]);
        let e = map_path(&outside, mount, "/data/a.mkv").unwrap_err();
        assert!(e.contains("outside MOUNTPOINT"), "{e}");
    }

    #[test]
    fn maps_are_checked_against_the_mountpoint() {
        let mount = Path::new("/mnt/media");
        assert!(check_maps(&maps(&[("/data", "/mnt/media/./tv/")]), mount).is_ok());
        assert!(check_maps(&maps(&[("/data", "/mnt/media")]), mount).is_ok());
        let e = check_maps(&maps(&[("/data", "/mnt/mediax")]), mount).unwrap_err();
        assert!(e.contains("is not under MOUNTPOINT /mnt/media"), "{e}");
        let e = check_maps(
            &maps(&[("/a", "/mnt/media/x"), ("/a/", "/mnt/media/y")]),
            mount,
        )
        .unwrap_err();
        assert!(e.contains("given twice"), "{e}");
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
