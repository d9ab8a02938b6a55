//! What to promote. With `promote=auto` a file is promoted once one open has read
//! `promote_after` bytes of it (playback does, a library scanner reading headers does
//! not), and the next `prefetch` files of its directory with the same extension, in
//! natural name order ("E2" after "E1", "E10" after "E9"), are queued behind it.

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Compares names the way people read them: runs of digits by value, the rest
/// case-insensitively.
pub fn natural_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let si = i;
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let na = trim_zeros(&a[si..i]);
            let nb = trim_zeros(&b[sj..j]);
            let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            let ord = a[i].to_ascii_lowercase().cmp(&b[j].to_ascii_lowercase());
            if ord != Ordering::Equal {
                return ord;
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let k = d.iter().position(|&c| c != b'0').unwrap_or(d.len());
    &d[k..]
}

fn extension(name: &[u8]) -> Option<Vec<u8>> {
    let dot = name.iter().rposition(|&c| c == b'.')?;
    (dot > 0).then(|| name[dot + 1..].to_ascii_lowercase())
}

/// The `n` names that come after `current` among `siblings` (regular files of the same
/// directory), in natural order, with the same extension as `current`.
pub fn next_files<'a>(current: &OsStr, siblings: &'a [&'a OsStr], n: usize) -> Vec<&'a OsStr> {
    let cur = current.as_bytes();
    let ext = extension(cur);
    let mut after: Vec<&OsStr> = siblings
        .iter()
        .copied()
        .filter(|s| extension(s.as_bytes()) == ext)
        .filter(|s| natural_cmp(s.as_bytes(), cur) == Ordering::Greater)
        .collect();
    after.sort_by(|a, b| natural_cmp(a.as_bytes(), b.as_bytes()));
    after.truncate(n);
    after
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut v: Vec<&str> = names.to_vec();
        v.sort_by(|a, b| natural_cmp(a.as_bytes(), b.as_bytes()));
        v.into_iter().map(String::from).collect()
    }

    #[test]
    fn natural_order() {
        assert_eq!(
            sorted(&["E10.mkv", "E9.mkv", "E1.mkv", "e2.mkv"]),
            ["E1.mkv", "e2.mkv", "E9.mkv", "E10.mkv"]
        );
        assert_eq!(
            sorted(&["Episode 10", "Episode 2", "Episode 1"]),
            ["Episode 1", "Episode 2", "Episode 10"]
        );
        assert_eq!(
            sorted(&["S01E02", "S01E01", "S02E01", "S01E10"]),
            ["S01E01", "S01E02", "S01E10", "S02E01"]
        );
        assert_eq!(natural_cmp(b"a007", b"a7"), Ordering::Less); // equal value: decided by bytes
        assert_eq!(natural_cmp(b"a", b"a1"), Ordering::Less);
        assert_eq!(
            natural_cmp(b"x99999999999999999999999", b"x100000000000000000000000"),
            Ordering::Less
        );
    }

    #[test]
    fn next_files_same_extension() {
        let names = [
            "E1.mkv", "E1.nfo", "E2.mkv", "E10.mkv", "E3.mkv", "E2.srt", "E9.MKV",
        ];
        let sib: Vec<&OsStr> = names.iter().map(OsStr::new).collect();
        let next = next_files(OsStr::new("E2.mkv"), &sib, 3);
        assert_eq!(next, ["E3.mkv", "E9.MKV", "E10.mkv"].map(OsStr::new));
        assert!(next_files(OsStr::new("E10.mkv"), &sib, 2).is_empty());
        assert_eq!(next_files(OsStr::new("E1.mkv"), &sib, 0).len(), 0);
    }
}
