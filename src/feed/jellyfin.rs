//! Jellyfin: what a feed asks (`GET /Shows/NextUp?userId=ID&fields=Path` and
//! `GET /Users/ID/Items/Resume?fields=Path`, signed with the API key both as
//! `Authorization: MediaBrowser Token="KEY"` and as the older `X-Emby-Token`, for servers
//! that read only one of them) and the answers' shape (`Items[].Path`).

use serde::Deserialize;

use super::Ask;

/// The requests of one round for `user`.
pub fn asks(user: &str) -> Vec<Ask> {
    vec![
        Ask {
            path: "/Shows/NextUp".into(),
            query: vec![("userId", user.to_string()), ("fields", "Path".into())],
            what: "Next Up",
            why: "next up",
            parse: item_paths,
        },
        Ask {
            path: format!("/Users/{user}/Items/Resume"),
            query: vec![("fields", "Path".into())],
            what: "Resume",
            why: "resume",
            parse: item_paths,
        },
    ]
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_user_goes_into_both_requests() {
        let a = asks("0123abcd");
        assert_eq!(a[0].path, "/Shows/NextUp");
        assert_eq!(
            a[0].query,
            [
                ("userId", "0123abcd".to_string()),
                ("fields", "Path".into())
            ]
        );
        assert_eq!(a[1].path, "/Users/0123abcd/Items/Resume");
        let h = headers("k1");
        assert!(h.contains(&("Authorization", "MediaBrowser Token=\"k1\"".into())));
        assert!(h.contains(&("X-Emby-Token", "k1".into())));
    }
}
