//! Sidecar files: the subtitles and `.nfo` that belong to a media file, decided by name
//! alone.
//!
//! Someone who moves a film to the SSD to keep the array's disks asleep while they watch
//! needs its subtitles and `.nfo` there too: a player opens them beside the film, and a
//! media server reads the `.nfo`. So a media file's sidecars travel with it: promoted,
//! pinned and evicted together (`cache::promoter`, `cache`).
//!
//! A media file's base name is its name without its last extension
//! (`Show - S01E09.mkv` -> `Show - S01E09`). A sidecar of it is named base, then zero or
//! more short tags (`.en`, `.forced`, `.pt-BR`: letters, digits, `-`, `_`, at most
//! [`MAX_TAG`] bytes each), then `.` and one of [`EXTENSIONS`] in any case. The base must
//! be followed by a dot, so `Show - S01E1.srt` is no sidecar of `Show - S01E10.mkv`, nor
//! `Show - S01E10.en.srt` of `Show - S01E1.mkv`. A file with one of those extensions is a
//! sidecar, never media: it has no sidecars of its own and is never a "next file".

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// The extensions of sidecar files, lower case: subtitles (text and image-based; `.idx`
/// and `.sub` come as a pair) and Kodi's `.nfo`.
pub const EXTENSIONS: &[&str] = &["srt", "ass", "ssa", "sub", "idx", "sup", "vtt", "nfo"];

/// The longest tag between the base and the extension: `forced`, `eng`, `pt-BR`,
/// `default`, `hearing_impaired` (16).
pub const MAX_TAG: usize = 16;

/// Where `name`'s last extension starts (its dot), if it has one: a leading dot (a
/// hidden file's) starts no extension.
fn last_dot(name: &[u8]) -> Option<usize> {
    name.iter().rposition(|&c| c == b'.').filter(|&d| d > 0)
}

fn is_sidecar_extension(ext: &[u8]) -> bool {
    EXTENSIONS
        .iter()
        .any(|e| e.as_bytes().eq_ignore_ascii_case(ext))
}

fn is_tag(tag: &[u8]) -> bool {
    (1..=MAX_TAG).contains(&tag.len())
        && tag
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// Whether `name` is a sidecar file by its extension (and so never media).
pub fn is_sidecar(name: &OsStr) -> bool {
    let name = name.as_bytes();
    last_dot(name).is_some_and(|d| is_sidecar_extension(&name[d + 1..]))
}

/// A media file's base name: its name without its last extension (all of it, if it has
/// none).
pub fn base(media: &OsStr) -> &[u8] {
    let name = media.as_bytes();
    &name[..last_dot(name).unwrap_or(name.len())]
}

/// Whether `name` is a sidecar of the media file `media` (both plain file names).
pub fn belongs(name: &OsStr, media: &OsStr) -> bool {
    if is_sidecar(media) {
        return false;
    }
    let base = base(media);
    let Some(rest) = name
        .as_bytes()
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix(b"."))
    else {
        return false;
    };
    let mut parts = rest.split(|&c| c == b'.');
    // `split` yields at least one part: the extension is the last.
    let Some(ext) = parts.next_back() else {
        return false;
    };
    is_sidecar_extension(ext) && parts.all(is_tag)
}

/// The sidecars of `media` among `names` (the file names of its directory), in their
/// order; none for a sidecar.
pub fn of<'a>(media: &OsStr, names: impl IntoIterator<Item = &'a OsStr>) -> Vec<&'a OsStr> {
    if is_sidecar(media) {
        return Vec::new();
    }
    names.into_iter().filter(|n| belongs(n, media)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn sidecar_of(name: &str, media: &str) -> bool {
        belongs(os(name), os(media))
    }

    #[test]
    fn subtitles_with_language_and_flag_tags_belong_to_their_film() {
        let film = "Film (2019).mkv";
        for name in [
            "Film (2019).srt",
            "Film (2019).en.srt",
            "Film (2019).en.forced.srt",
            "Film (2019).eng.sdh.srt",
            "Film (2019).pt-BR.srt",
            "Film (2019).zh_Hans.ass",
            "Film (2019).default.en.forced.srt",
            "Film (2019).en.hearing_impaired.srt",
            "Film (2019).ssa",
            "Film (2019).en.vtt",
            "Film (2019).sup",
            "Film (2019).nfo",
            // Upper-case extensions, as Windows tools write them.
            "Film (2019).SRT",
            "Film (2019).EN.Srt",
            "Film (2019).NFO",
            // A VobSub pair.
            "Film (2019).idx",
            "Film (2019).sub",
            "Film (2019).en.idx",
            "Film (2019).en.sub",
            // The media file's own name as a tag (`name.mkv.srt`, as some tools save).
            "Film (2019).mkv.srt",
            "Film (2019).2.srt",
        ] {
            assert!(sidecar_of(name, film), "{name} belongs to {film}");
        }
    }

    #[test]
    fn names_that_only_look_alike_do_not_belong() {
        let table: &[(&str, &str)] = &[
            // E1 and E10: the base must be followed by a dot, in either direction.
            ("Show - S01E1.srt", "Show - S01E10.mkv"),
            ("Show - S01E1.en.srt", "Show - S01E10.mkv"),
            ("Show - S01E10.srt", "Show - S01E1.mkv"),
            ("Show - S01E10.en.srt", "Show - S01E1.mkv"),
            ("Show - S01E10.en.forced.srt", "Show - S01E1.mkv"),
            // Another file's base with the same start.
            ("Film 2.srt", "Film.mkv"),
            ("Film-extras.nfo", "Film.mkv"),
            ("Film.srt", "Film 2.mkv"),
            // Not a sidecar extension.
            ("Film.jpg", "Film.mkv"),
            ("Film.en.txt", "Film.mkv"),
            ("Film.mkv", "Film.mkv"),
            ("Film.avi", "Film.mkv"),
            ("Film.srt.bak", "Film.mkv"),
            // Tags: empty, too long, or of other characters.
            ("Film..srt", "Film.mkv"),
            ("Film.en..srt", "Film.mkv"),
            ("Film.a-very-long-tag-indeed.srt", "Film.mkv"),
            ("Film.English SDH.srt", "Film.mkv"),
            ("Film.en+fr.srt", "Film.mkv"),
            // The base alone, without an extension.
            ("Film.", "Film.mkv"),
            ("Film", "Film.mkv"),
            // Case matters in the base: Linux names are bytes.
            ("film.srt", "Film.mkv"),
            // A sidecar is never media: nothing belongs to it.
            ("Film.en.srt", "Film.srt"),
            ("Film.srt", "Film.nfo"),
            ("Film.idx", "Film.sub"),
            ("Film.sub", "Film.idx"),
        ];
        for (name, media) in table {
            assert!(
                !sidecar_of(name, media),
                "{name} does not belong to {media}"
            );
        }
    }

    #[test]
    fn base_names() {
        for (media, want) in [
            ("Show - S01E09.mkv", "Show - S01E09"),
            ("Film (2019).1080p.mkv", "Film (2019).1080p"),
            ("Film", "Film"),
            (".hidden", ".hidden"),
            ("a.b.c", "a.b"),
        ] {
            assert_eq!(base(os(media)), want.as_bytes(), "{media}");
        }
        // A dotted base takes the sidecars named after all of it.
        assert!(sidecar_of(
            "Show.S01E01.720p.en.srt",
            "Show.S01E01.720p.mkv"
        ));
        assert!(!sidecar_of("Show.S01E01.srt", "Show.S01E01.720p.mkv"));
        // A media file without an extension has sidecars too.
        assert!(sidecar_of("Film.en.srt", "Film"));
        assert!(!sidecar_of(".srt", ".mkv"));
    }

    #[test]
    fn sidecar_by_extension() {
        for name in [
            "a.srt", "a.en.ASS", "a.SSA", "a.sub", "a.idx", "a.sup", "a.vtt", "a.NFO",
        ] {
            assert!(is_sidecar(os(name)), "{name}");
        }
        for name in [
            "a.mkv",
            "a.mp4",
            "a.srt.mkv",
            "srt",
            ".srt",
            "a.srtx",
            "a.nfo~",
        ] {
            assert!(!is_sidecar(os(name)), "{name}");
        }
    }

    #[test]
    fn the_sidecars_of_an_episode_among_its_season() {
        let names = [
            "Show - S01E1.mkv",
            "Show - S01E1.srt",
            "Show - S01E1.en.forced.srt",
            "Show - S01E10.mkv",
            "Show - S01E10.en.srt",
            "Show - S01E10.en.forced.srt",
            "Show - S01E10.nfo",
            "Show - S01E10.idx",
            "Show - S01E10.sub",
            "Show - S01E10.jpg",
            "Show - S01E10-thumb.jpg",
            "Show - S01E11.srt",
            "tvshow.nfo",
        ];
        let names: Vec<&OsStr> = names.iter().map(|n| os(n)).collect();
        assert_eq!(
            of(os("Show - S01E10.mkv"), names.iter().copied()),
            [
                "Show - S01E10.en.srt",
                "Show - S01E10.en.forced.srt",
                "Show - S01E10.nfo",
                "Show - S01E10.idx",
                "Show - S01E10.sub",
            ]
            .map(os)
        );
        assert_eq!(
            of(os("Show - S01E1.mkv"), names.iter().copied()),
            ["Show - S01E1.srt", "Show - S01E1.en.forced.srt"].map(os)
        );
        // A sidecar promoted on its own brings nothing.
        assert!(of(os("Show - S01E10.idx"), names.iter().copied()).is_empty());
        assert!(of(os("Show - S01E12.mkv"), names.iter().copied()).is_empty());
    }
}
