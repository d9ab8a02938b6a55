//! Plex: what a feed asks (`GET /library/onDeck` with `X-Plex-Token`, JSON through
//! `Accept: application/json`, a page at a time through `X-Plex-Container-Start` and
//! `-Size` until the answer's `totalSize`), once per token, as On Deck is the token's
//! user's only; and the answer's shape, JSON
//! (`MediaContainer{totalSize,offset,Metadata[].Media[].Part[].file}`) or XML, which Plex
//! gives when it does not honour the Accept header
//! (`<MediaContainer totalSize offset><Video><Media><Part file/>`).

use serde::Deserialize;

use super::http::HttpError;
use super::{Client, Heard, xml};

/// The list's path on the server.
const ON_DECK: &str = "/library/onDeck";

/// Items asked for per page (python-plexapi asks for 100 too).
pub const PAGE: u64 = 100;

/// The most pages one list may take: far more than any On Deck has, and a bound on a
/// server whose `totalSize` never comes.
const MAX_PAGES: u64 = 1000;

/// The On Deck lists of every token's user, unioned in the order given.
pub fn lists(c: &Client, tokens: &[String]) -> Heard {
    let mut heard = Heard::default();
    for (i, token) in tokens.iter().enumerate() {
        let what = if tokens.len() == 1 {
            "On Deck".to_string()
        } else {
            format!("On Deck of token {} of {}", i + 1, tokens.len())
        };
        match on_deck(c, token, &what) {
            Ok(files) => heard
                .listed
                .extend(files.into_iter().map(|f| (f, "on deck"))),
            Err((line, unreachable)) => {
                heard.failed.push(line);
                // Each token is its own, but no server is no server for any of them.
                if unreachable {
                    break;
                }
            }
        }
    }
    heard
}

/// One token's On Deck, every page; the error is the line for the failed request, and
/// whether the server could not be reached.
fn on_deck(c: &Client, token: &str, what: &str) -> Result<Vec<String>, (String, bool)> {
    let mut files = Vec::new();
    let mut start = 0;
    let malformed = |why: &str| (c.malformed(ON_DECK, why), false);
    for _ in 0..MAX_PAGES {
        let body = c.get(ON_DECK, &[], &headers(token, start)).map_err(|e| {
            let unreachable = matches!(e, HttpError::Unreachable(_));
            (c.explain(what, ON_DECK, &e), unreachable)
        })?;
        let page = page(&body).map_err(|e| malformed(&e))?;
        if page.offset.is_some_and(|o| o != start) {
            return Err(malformed(&format!(
                "the items from offset {} when asked for those from {start} \
                     (X-Plex-Container-Start)",
                page.offset.unwrap_or_default()
            )));
        }
        files.extend(page.files);
        start += page.items;
        // Without totalSize the answer is the whole list; an empty page ends it early (the
        // list shrank while it was read).
        match page.total {
            Some(total) if page.items > 0 && start < total => {}
            _ => return Ok(files),
        }
    }
    Err(malformed(&format!(
        "more than {MAX_PAGES} pages of {PAGE} items"
    )))
}

/// The headers that sign a request in, ask for JSON, and ask for the page at `start`.
pub fn headers(token: &str, start: u64) -> Vec<(&'static str, String)> {
    vec![
        ("X-Plex-Token", token.to_string()),
        ("Accept", "application/json".into()),
        ("X-Plex-Container-Start", start.to_string()),
        ("X-Plex-Container-Size", PAGE.to_string()),
    ]
}

/// One page of On Deck.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Every part's file, in the answer's order (a film in two parts, or in two versions,
    /// gives each).
    pub files: Vec<String>,
    /// The items on this page (an item may have several files, or none).
    pub items: u64,
    /// `totalSize`: the items of the whole list.
    pub total: Option<u64>,
    /// `offset`: where this page starts in the list.
    pub offset: Option<u64>,
}

/// An On Deck answer in JSON or in XML, whichever it is.
pub fn page(body: &[u8]) -> Result<Page, String> {
    let text = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    match text.iter().find(|c| !c.is_ascii_whitespace()) {
        Some(b'<') => xml_page(text),
        _ => json_page(text),
    }
}

#[derive(Deserialize)]
struct OnDeck {
    #[serde(rename = "MediaContainer")]
    container: Container,
}

#[derive(Deserialize)]
struct Container {
    #[serde(rename = "totalSize")]
    total: Option<u64>,
    offset: Option<u64>,
    // Plex leaves the key out when On Deck is empty.
    #[serde(rename = "Metadata", default)]
    metadata: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(rename = "Media", default)]
    media: Vec<Media>,
}

#[derive(Deserialize)]
struct Media {
    #[serde(rename = "Part", default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
struct Part {
    file: Option<String>,
}

fn json_page(body: &[u8]) -> Result<Page, String> {
    let deck: OnDeck = serde_json::from_slice(body).map_err(|e| {
        format!("not an On Deck answer (JSON with MediaContainer.Metadata, or XML): {e}")
    })?;
    let c = deck.container;
    Ok(Page {
        items: c.metadata.len() as u64,
        total: c.total,
        offset: c.offset,
        files: c
            .metadata
            .into_iter()
            .flat_map(|i| i.media)
            .flat_map(|m| m.parts)
            .filter_map(|p| p.file)
            .collect(),
    })
}

fn xml_page(body: &[u8]) -> Result<Page, String> {
    let bad = |e: String| format!("not an On Deck answer (XML with <MediaContainer>): {e}");
    let doc = std::str::from_utf8(body).map_err(|e| bad(e.to_string()))?;
    let number = |t: &xml::Tag, name: &str| -> Result<Option<u64>, String> {
        t.attr(name)?
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{name}=\"{v}\" is no number"))
            })
            .transpose()
    };
    let mut page = Page::default();
    let mut root = false;
    let mut tags = xml::tags(doc);
    loop {
        let depth = tags.depth();
        let Some(tag) = tags.next() else { break };
        let tag = tag.map_err(bad)?;
        if tag.kind == xml::Kind::Close {
            continue;
        }
        match depth {
            0 if root => return Err(bad("a second root element".into())),
            0 if tag.name != "MediaContainer" => {
                return Err(bad(format!("the root is <{}>", tag.name)));
            }
            0 => {
                root = true;
                page.total = number(&tag, "totalSize").map_err(bad)?;
                page.offset = number(&tag, "offset").map_err(bad)?;
            }
            1 => page.items += 1,
            _ => {}
        }
        if tag.name == "Part" {
            page.files.extend(tag.attr("file").map_err(bad)?);
        }
    }
    if !root {
        return Err(bad("no <MediaContainer>".into()));
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn json_parts_in_order() {
        // Trimmed from a real answer: the keys that matter, and some that do not.
        let body = br#"{"MediaContainer":{"size":2,"totalSize":7,"offset":0,"allowSync":false,"identifier":"com.plexapp.plugins.library","mediaTagPrefix":"/system/bundle/media/flags/","Metadata":[
            {"ratingKey":"101","type":"episode","title":"Two","grandparentTitle":"Show","index":2,"parentIndex":1,"viewOffset":61000,
             "Media":[{"id":7,"duration":1500000,"container":"mkv","Part":[{"id":9,"key":"/library/parts/9/1/file.mkv","duration":1500000,"file":"/data/tv/Show/Season 1/Show - S01E02.mkv","size":734003200,"container":"mkv"}]}]},
            {"ratingKey":"202","type":"movie","title":"Film","Media":[
                {"id":8,"Part":[{"id":10,"file":"/data/movies/Film (2020)/Film - cd1.avi"},{"id":11,"file":"/data/movies/Film (2020)/Film - cd2.avi"}]},
                {"id":12,"Part":[{"id":13}]}]},
            {"ratingKey":"303","type":"clip","title":"No media"}
        ]}}"#;
        assert_eq!(
            page(body).unwrap(),
            Page {
                files: vec![
                    "/data/tv/Show/Season 1/Show - S01E02.mkv".into(),
                    "/data/movies/Film (2020)/Film - cd1.avi".into(),
                    "/data/movies/Film (2020)/Film - cd2.avi".into(),
                ],
                items: 3,
                total: Some(7),
                offset: Some(0),
            }
        );
        assert_eq!(
            page(br#"{"MediaContainer":{"size":0}}"#).unwrap(),
            Page::default()
        );
        for bad in [
            &br#"{"Items":[]}"#[..],
            br#"{"MediaContainer":{"Metadata":{}}}"#,
            br#"{"MediaContainer":{"totalSize":"x"}}"#,
            b"",
            b"Unauthorized",
        ] {
            let e = page(bad).unwrap_err();
            assert!(e.contains("not an On Deck answer"), "{e}");
        }
    }

    #[test]
    fn xml_parts_in_order() {
        // As Plex writes it: a declaration, attributes on every element, entities.
        let body = "\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
            <MediaContainer size=\"3\" totalSize=\"2000\" offset=\"100\" allowSync=\"0\" \
              identifier=\"com.plexapp.plugins.library\" mediaTagPrefix=\"/system/bundle/media/flags/\">\n\
            <Video ratingKey=\"101\" type=\"episode\" title=\"Tom &amp; Jerry&apos;s &quot;Day&quot;\" \
              summary=\"Line one&#10;line &lt;two&gt;\">\n\
              <Media id=\"7\" duration=\"1500000\" container=\"mkv\">\n\
                <Part id=\"9\" key=\"/library/parts/9/1/file.mkv\" file=\"/data/tv/Tom &amp; Jerry/S01E02 &#x263A; &#233;.mkv\" size=\"734003200\" />\n\
              </Media>\n\
              <Genre tag=\"Comedy\" />\n\
            </Video>\n\
            <Video ratingKey=\"202\" type=\"movie\" title=\"Film\">\
              <Media id=\"8\"><Part id=\"10\" file='/data/movies/Film/cd1.avi'/><Part id=\"11\" file=\"/data/movies/Film/cd2.avi\"/></Media>\
              <Media id=\"12\"><Part id=\"13\"/></Media>\
            </Video>\n\
            <Video ratingKey=\"303\" type=\"clip\" title=\"No media\"/>\n\
            </MediaContainer>\n";
        assert_eq!(
            page(body.as_bytes()).unwrap(),
            Page {
                files: vec![
                    "/data/tv/Tom & Jerry/S01E02 \u{263a} é.mkv".into(),
                    "/data/movies/Film/cd1.avi".into(),
                    "/data/movies/Film/cd2.avi".into(),
                ],
                items: 3,
                total: Some(2000),
                offset: Some(100),
            }
        );
        assert_eq!(
            page(b"<?xml version=\"1.0\"?><MediaContainer size=\"0\"/>").unwrap(),
            Page::default()
        );
        for (bad, says) in [
            (
                &b"<html><body>401 Unauthorized</body></html>"[..],
                "the root is <html>",
            ),
            (b"<MediaContainer size=\"1\"><Video>", "cut short"),
            (b"<MediaContainer totalSize=\"many\"/>", "is no number"),
            (b"<MediaContainer/><MediaContainer/>", "second root"),
            (b"<?xml version=\"1.0\"?>", "no <MediaContainer>"),
            (
                b"<MediaContainer><Part file=\"a &nbsp; b\"/></MediaContainer>",
                "unknown entity",
            ),
            (b"<MediaContainer>\xff</MediaContainer>", "invalid utf-8"),
        ] {
            let e = page(bad).unwrap_err();
            assert!(e.contains("not an On Deck answer (XML"), "{e}");
            assert!(e.contains(says), "{}: {e}", String::from_utf8_lossy(bad));
        }
    }

    /// A client whose server pages `total` items (files `/f/N.mkv`) by the requests'
    /// headers, at most `cap` a page, XML for token `x`, JSON otherwise.
    fn paged(total: u64, cap: u64, asked: &RefCell<Vec<(String, u64, u64)>>) -> Client<'_> {
        Client::fake(move |path, _, headers| {
            let h = |k: &str| {
                headers
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.clone())
            };
            let token = h("X-Plex-Token").unwrap();
            let start: u64 = h("X-Plex-Container-Start").unwrap().parse().unwrap();
            let size: u64 = h("X-Plex-Container-Size").unwrap().parse().unwrap();
            assert_eq!(path, ON_DECK);
            asked.borrow_mut().push((token.clone(), start, size));
            if token == "bad" {
                return Err(HttpError::Auth(401));
            }
            let n: Vec<u64> = (start..total.min(start + size.min(cap))).collect();
            Ok(if token == "x" {
                let items: String = n
                    .iter()
                    .map(|i| format!("<Video><Media><Part file=\"/f/{i}.mkv\"/></Media></Video>"))
                    .collect();
                format!(
                    "<MediaContainer size=\"{}\" totalSize=\"{total}\" offset=\"{start}\">{items}</MediaContainer>",
                    n.len()
                )
            } else {
                let items: Vec<_> = n
                    .iter()
                    .map(|i| serde_json::json!({"Media": [{"Part": [{"file": format!("/f/{i}.mkv")}]}]}))
                    .collect();
                serde_json::json!({"MediaContainer": {"size": n.len(), "totalSize": total, "offset": start, "Metadata": items}})
                    .to_string()
            }
            .into_bytes())
        })
    }

    #[test]
    fn pages_until_total_size_for_each_token() {
        let asked = RefCell::new(Vec::new());
        // The server gives at most 50 a page, though asked for 100.
        let c = paged(230, 50, &asked);
        let heard = lists(&c, &["j".into(), "bad".into(), "x".into()]);
        let want: Vec<String> = (0..230).map(|i| format!("/f/{i}.mkv")).collect();
        let files: Vec<&str> = heard.listed.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(files.len(), 460);
        assert_eq!(
            files[..230],
            want.iter().map(String::as_str).collect::<Vec<_>>()[..]
        );
        assert_eq!(files[230..], files[..230]);
        assert!(heard.listed.iter().all(|(_, why)| *why == "on deck"));
        assert_eq!(
            heard.failed,
            [
                "Plex at http://fake refused the request for On Deck of token 2 of 3 (HTTP 401): \
              the token is wrong: give the server's X-Plex-Token with --token"
            ]
        );
        let asked_now = asked.borrow().clone();
        let starts: Vec<(&str, u64, u64)> = asked_now
            .iter()
            .map(|(t, s, z)| (t.as_str(), *s, *z))
            .collect();
        let per_token = [0, 50, 100, 150, 200];
        let mut want = Vec::new();
        want.extend(per_token.iter().map(|&s| ("j", s, PAGE)));
        want.push(("bad", 0, PAGE));
        want.extend(per_token.iter().map(|&s| ("x", s, PAGE)));
        assert_eq!(starts, want);

        // Exactly a page, and an empty list: one request each.
        for total in [100, 0] {
            asked.borrow_mut().clear();
            let heard = lists(&paged(total, 1000, &asked), &["j".into()]);
            assert_eq!(heard.listed.len() as u64, total);
            assert_eq!(asked.borrow().len(), 1);
        }
    }

    #[test]
    fn a_server_that_ignores_the_page_asked_for_is_an_error_not_a_loop() {
        let calls = RefCell::new(0);
        let c = Client::fake(|_, _, _| {
            *calls.borrow_mut() += 1;
            Ok(br#"{"MediaContainer":{"size":1,"totalSize":5,"offset":0,"Metadata":[{"Media":[{"Part":[{"file":"/a.mkv"}]}]}]}}"#.to_vec())
        });
        let heard = lists(&c, &["t".into()]);
        assert!(heard.listed.is_empty());
        assert_eq!(heard.failed.len(), 1);
        assert!(
            heard.failed[0].contains("the items from offset 0 when asked for those from 1"),
            "{:?}",
            heard.failed
        );
        assert_eq!(*calls.borrow(), 2);

        // No offset, and never at the end: bounded.
        let calls = RefCell::new(0);
        let c = Client::fake(|_, _, _| {
            *calls.borrow_mut() += 1;
            Ok(br#"<MediaContainer totalSize="999999999"><Video/></MediaContainer>"#.to_vec())
        });
        let heard = lists(&c, &["t".into()]);
        assert!(
            heard.failed[0].contains("more than 1000 pages"),
            "{:?}",
            heard.failed
        );
        assert_eq!(*calls.borrow(), MAX_PAGES);
    }
}
