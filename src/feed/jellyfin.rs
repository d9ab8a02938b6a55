//! Jellyfin: what a feed asks, for each user (`--user ID`, repeatable, or `--user all`:
//! every user `GET /Users?isDisabled=false` lists that is not disabled):
//! `GET /Shows/NextUp?userId=ID&fields=Path` and Resume,
//! `GET /UserItems/Resume?userId=ID&fields=Path` (10.9 on) or, where that answers 404,
//! `GET /Users/ID/Items/Resume?fields=Path` (10.8, and obsolete since); each request signed
//! with the API key both as `Authorization: MediaBrowser Token="KEY"` and as the older
//! `X-Emby-Token`, for servers that read only one of them; and the answers' shapes
//! (`Items[].Path`; a user's `Id`, `Name`, `Policy.IsDisabled`).

use std::cell::Cell;

use serde::Deserialize;

use super::http::HttpError;
use super::{Client, Heard};
use crate::cli::JellyfinUsers;

const NEXT_UP: &str = "/Shows/NextUp";
const RESUME: &str = "/UserItems/Resume";
const USERS: &str = "/Users";

/// A user whose lists are asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    /// From `/Users`; unknown for an ID given with `--user`.
    pub name: Option<String>,
}

/// The Next Up and Resume lists of every user, unioned in the users' order.
pub fn lists(c: &Client, api_key: &str, users: &JellyfinUsers) -> Heard {
    let headers = headers(api_key);
    let mut heard = Heard::default();
    let users = match users {
        JellyfinUsers::These(ids) => ids
            .iter()
            .map(|id| User {
                id: id.clone(),
                name: None,
            })
            .collect(),
        JellyfinUsers::All => {
            let query = [("isDisabled", "false".to_string())];
            match c.get(USERS, &query, &headers) {
                Ok(body) => match enabled_users(&body) {
                    Ok(u) => u,
                    Err(e) => {
                        heard.failed.push(c.malformed(USERS, &e));
                        return heard;
                    }
                },
                Err(e) => {
                    heard.failed.push(c.explain("the list of users", USERS, &e));
                    return heard;
                }
            }
        }
    };
    // Whether the server lacks /UserItems/Resume (10.8): learnt from the first user's, so
    // that the others' go to the old path at once.
    let old_resume = Cell::new(false);
    for u in &users {
        let of = if users.len() > 1 {
            match &u.name {
                Some(name) => format!(" of {name}"),
                None => format!(" of user {}", u.id),
            }
        } else {
            String::new()
        };
        for (list, why) in [("Next Up", "next up"), ("Resume", "resume")] {
            let (path, answer) = if why == "next up" {
                let by_user = [("userId", u.id.clone()), ("fields", "Path".to_string())];
                let answer = c.get(NEXT_UP, &by_user, &headers);
                (NEXT_UP, answer.map_err(|e| (NEXT_UP.to_string(), e)))
            } else {
                (RESUME, resume(c, &u.id, &headers, &old_resume))
            };
            let answer =
                answer.map_err(|(path, e)| (c.explain(&format!("{list}{of}"), &path, &e), e));
            match answer {
                Ok(body) => match item_paths(&body) {
                    Ok(paths) => heard.listed.extend(paths.into_iter().map(|p| (p, why))),
                    Err(e) => heard.failed.push(c.malformed(path, &e)),
                },
                Err((line, e)) => {
                    heard.failed.push(line);
                    // A wrong key, or no server: every other request would fail alike.
                    if e.is_for_all() {
                        return heard;
                    }
                }
            }
        }
    }
    heard
}

/// A user's Resume: the new path first, the old one where the new one is not found. The
/// error names the path (both, when both were asked).
fn resume(
    c: &Client,
    user: &str,
    headers: &[(&str, String)],
    old_only: &Cell<bool>,
) -> Result<Vec<u8>, (String, HttpError)> {
    let old = format!("/Users/{user}/Items/Resume");
    let fields = ("fields", "Path".to_string());
    if !old_only.get() {
        let query = [("userId", user.to_string()), fields.clone()];
        match c.get(RESUME, &query, headers) {
            Err(HttpError::Status(404, _)) => {}
            Err(e) => return Err((RESUME.to_string(), e)),
            Ok(body) => return Ok(body),
        }
        let body = c
            .get(&old, &[fields], headers)
            .map_err(|e| (format!("{RESUME} and {old}"), e))?;
        old_only.set(true);
        return Ok(body);
    }
    c.get(&old, &[fields], headers).map_err(|e| (old, e))
}

/// The headers that sign a request in.
pub fn headers(api_key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Authorization", format!("MediaBrowser Token=\"{api_key}\"")),
        ("X-Emby-Token", api_key.to_string()),
        ("Accept", "application/json".into()),
    ]
}

#[derive(Deserialize)]
struct Items {
    #[serde(rename = "Items")]
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    // Items without a file of their own (a virtual episode) have none.
    #[serde(rename = "Path")]
    path: Option<String>,
}

/// Every item's path, in the answer's order.
pub fn item_paths(body: &[u8]) -> Result<Vec<String>, String> {
    let items: Items = serde_json::from_slice(body)
        .map_err(|e| format!("not a list of items (JSON with Items[].Path): {e}"))?;
    Ok(items.items.into_iter().filter_map(|i| i.path).collect())
}

#[derive(Deserialize)]
struct UserDto {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "Policy")]
    policy: Option<Policy>,
}

#[derive(Deserialize)]
struct Policy {
    #[serde(rename = "IsDisabled", default)]
    disabled: bool,
}

/// The users of a `/Users` answer that are not disabled, in its order. An ID goes into a
/// URL path: one that would need escaping there is an error.
pub fn enabled_users(body: &[u8]) -> Result<Vec<User>, String> {
    let users: Vec<UserDto> = serde_json::from_slice(body)
        .map_err(|e| format!("not a list of users (JSON, [{{Id, Name, Policy}}]): {e}"))?;
    let mut out = Vec::new();
    for u in users {
        if u.policy.is_some_and(|p| p.disabled) {
            continue;
        }
        if u.id.is_empty() || !u.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("a user ID that is no ID: {:?}", u.id));
        }
        out.push(User {
            id: u.id,
            name: u.name,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn paths_in_order() {
        let body = br#"{"Items":[
            {"Name":"Two","ServerId":"abc","Id":"e1","Path":"/media/tv/Show/Season 01/S01E02.mkv","Type":"Episode","SeriesName":"Show","IndexNumber":2,"ParentIndexNumber":1,"UserData":{"PlaybackPositionTicks":0,"Played":false}},
            {"Name":"Missing","Id":"e2","Type":"Episode","LocationType":"Virtual"},
            {"Name":"Film","Id":"m1","Path":"/media/movies/Film (2020)/Film.mkv","Type":"Movie"}
        ],"TotalRecordCount":3,"StartIndex":0}"#;
        assert_eq!(
            item_paths(body).unwrap(),
            [
                "/media/tv/Show/Season 01/S01E02.mkv",
                "/media/movies/Film (2020)/Film.mkv"
            ]
        );
        assert!(
            item_paths(br#"{"Items":[],"TotalRecordCount":0}"#)
                .unwrap()
                .is_empty()
        );
        for bad in [&b"[]"[..], br#"{"MediaContainer":{}}"#, b"<html>"] {
            let e = item_paths(bad).unwrap_err();
            assert!(e.contains("not a list of items"), "{e}");
        }
    }

    #[test]
    fn users_not_disabled() {
        // Trimmed from a real /Users answer.
        let body = br#"[
            {"Name":"Ann","ServerId":"f00d","Id":"4f3c2b1a00000000000000000000beef","HasPassword":true,"EnableAutoLogin":false,"LastLoginDate":"2024-01-01T00:00:00.0000000Z","Configuration":{"PlayDefaultAudioTrack":true},"Policy":{"IsAdministrator":true,"IsHidden":true,"IsDisabled":false}},
            {"Name":"Old","Id":"00000000000000000000000000000001","Policy":{"IsAdministrator":false,"IsDisabled":true}},
            {"Name":"Bo & Kid","Id":"00000000000000000000000000000002","Policy":{"IsAdministrator":false}},
            {"Id":"00000000000000000000000000000003"}
        ]"#;
        let users = enabled_users(body).unwrap();
        let got: Vec<(&str, Option<&str>)> = users
            .iter()
            .map(|u| (u.id.as_str(), u.name.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("4f3c2b1a00000000000000000000beef", Some("Ann")),
                ("00000000000000000000000000000002", Some("Bo & Kid")),
                ("00000000000000000000000000000003", None),
            ]
        );
        assert!(enabled_users(b"[]").unwrap().is_empty());
        for (bad, says) in [
            (&br#"{"Items":[]}"#[..], "not a list of users"),
            (br#"[{"Name":"x"}]"#, "not a list of users"),
            (br#"[{"Id":"../../System"}]"#, "no ID"),
            (br#"[{"Id":""}]"#, "no ID"),
        ] {
            let e = enabled_users(bad).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    type Seen = RefCell<Vec<(String, String)>>;

    /// A Jellyfin of `version` (10.8 lacks /UserItems/Resume, 10.11 has both paths, 12
    /// only the new one): users `a` and `b` (and `off`, disabled); each user's Next Up is
    /// `/n/USER`, Resume `/r/USER`.
    fn server(version: u32, seen: &Seen) -> Client<'_> {
        Client::fake(move |path, query, headers| {
            let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            seen.borrow_mut().push((path.to_string(), q.join("&")));
            if !headers.contains(&("X-Emby-Token", "k".to_string())) {
                return Err(HttpError::Auth(401));
            }
            let user = query
                .iter()
                .find(|(k, _)| *k == "userId")
                .map(|(_, v)| v.as_str());
            let known = |u: &str| ["a", "b", "off"].contains(&u);
            let items = |p: &str| Ok(format!(r#"{{"Items":[{{"Path":"{p}"}}]}}"#).into_bytes());
            let not_found = Err(HttpError::Status(404, None));
            match (path, user) {
                ("/Users", None) => Ok(br#"[{"Id":"a","Name":"Ann"},{"Id":"off","Policy":{"IsDisabled":true}},{"Id":"b","Name":"Bo"}]"#.to_vec()),
                ("/Shows/NextUp", Some(u)) if known(u) => items(&format!("/n/{u}")),
                ("/UserItems/Resume", Some(u)) if version >= 11 && known(u) => items(&format!("/r/{u}")),
                (p, None) if version <= 11 => match p.strip_prefix("/Users/").and_then(|p| p.strip_suffix("/Items/Resume")) {
                    Some(u) if known(u) => items(&format!("/r/{u}")),
                    _ => not_found,
                },
                _ => not_found,
            }
        })
    }

    /// What `server` lists for users `a` and `b`.
    const BOTH_USERS: [(&str, &str); 4] = [
        ("/n/a", "next up"),
        ("/r/a", "resume"),
        ("/n/b", "next up"),
        ("/r/b", "resume"),
    ];

    fn paths(h: &Heard) -> Vec<(&str, &str)> {
        h.listed.iter().map(|(p, w)| (p.as_str(), *w)).collect()
    }

    fn these(ids: &[&str]) -> JellyfinUsers {
        JellyfinUsers::These(ids.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn resume_falls_back_to_the_old_path_where_the_new_one_is_missing() {
        for version in [8, 11, 12] {
            let seen = Seen::default();
            let heard = lists(&server(version, &seen), "k", &these(&["a", "b"]));
            assert!(heard.failed.is_empty(), "{version}: {:?}", heard.failed);
            assert_eq!(paths(&heard), BOTH_USERS, "{version}");
            let asked: Vec<String> = seen
                .borrow()
                .iter()
                .map(|(p, q)| format!("{p}?{q}"))
                .collect();
            let want: &[&str] = if version == 8 {
                // The new path once; once it is found missing, only the old one.
                &[
                    "/Shows/NextUp?userId=a&fields=Path",
                    "/UserItems/Resume?userId=a&fields=Path",
                    "/Users/a/Items/Resume?fields=Path",
                    "/Shows/NextUp?userId=b&fields=Path",
                    "/Users/b/Items/Resume?fields=Path",
                ]
            } else {
                &[
                    "/Shows/NextUp?userId=a&fields=Path",
                    "/UserItems/Resume?userId=a&fields=Path",
                    "/Shows/NextUp?userId=b&fields=Path",
                    "/UserItems/Resume?userId=b&fields=Path",
                ]
            };
            assert_eq!(asked, want, "{version}");
        }
    }

    #[test]
    fn all_users_are_listed_and_failures_are_named() {
        let seen = Seen::default();
        let heard = lists(&server(12, &seen), "k", &JellyfinUsers::All);
        assert!(heard.failed.is_empty(), "{:?}", heard.failed);
        assert_eq!(paths(&heard), BOTH_USERS);
        assert_eq!(
            seen.borrow()[0],
            ("/Users".into(), "isDisabled=false".into())
        );

        // An unknown user among known ones: its two requests fail, named; the others count.
        let heard = lists(&server(8, &seen), "k", &these(&["a", "zz"]));
        assert_eq!(paths(&heard), [("/n/a", "next up"), ("/r/a", "resume")]);
        assert_eq!(
            heard.failed,
            [
                "Plex at http://fake answered HTTP 404 to /Shows/NextUp (Next Up of user zz): \
                 check --url",
                "Plex at http://fake answered HTTP 404 to /Users/zz/Items/Resume (Resume of user \
                 zz): check --url",
            ]
        );
        // Unknown on a new server: both Resume paths were asked, and the line says so.
        let heard = lists(&server(12, &seen), "k", &these(&["zz"]));
        assert_eq!(heard.failed.len(), 2);
        assert!(
            heard.failed[1]
                .contains("HTTP 404 to /UserItems/Resume and /Users/zz/Items/Resume (Resume)"),
            "{:?}",
            heard.failed
        );

        // A wrong key: one line, no more requests.
        seen.borrow_mut().clear();
        let heard = lists(&server(12, &seen), "nope", &these(&["a", "b"]));
        assert!(heard.listed.is_empty());
        assert_eq!(heard.failed.len(), 1);
        assert!(heard.failed[0].contains("refused the request for Next Up of user a (HTTP 401)"));
        assert_eq!(seen.borrow().len(), 1);
        seen.borrow_mut().clear();
        let heard = lists(&server(12, &seen), "nope", &JellyfinUsers::All);
        assert!(heard.failed[0].contains("refused the request for the list of users"));
        assert_eq!(seen.borrow().len(), 1);
    }

    #[test]
    fn the_key_goes_into_both_headers() {
        let h = headers("k1");
        assert!(h.contains(&("Authorization", "MediaBrowser Token=\"k1\"".into())));
        assert!(h.contains(&("X-Emby-Token", "k1".into())));
    }
}
