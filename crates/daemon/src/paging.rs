//! Paging of the responses that grow with the number of containers (List,
//! Stats), so none nears gRPC's 4 MiB message limit (issue 9, item 11).
//! Items come in a stable order — (namespace, id), or the caller's order of
//! ids — and a page token names the last item of the previous page, so a
//! container created or removed between two pages neither shifts nor
//! repeats the others. A page ends at the caller's count or once its
//! encoded size would pass [`PAGE_BUDGET`]; it always holds at least one
//! item, so paging always progresses.

use berth_model::{ContainerId, Namespace};

use crate::error::{Error, Result};
use crate::manager::Key;

/// Encoded bytes a page may hold: half of gRPC's default 4 MiB limit,
/// leaving room for one item that alone is bigger than the rest of a page.
pub const PAGE_BUDGET: usize = 2 * 1024 * 1024;

/// The token that resumes after `key`. Opaque to clients; `/` never
/// appears in a namespace or an id, so it is unambiguous.
pub fn token(key: &Key) -> String {
    format!("{}/{}", key.0, key.1)
}

/// The key a page token resumes after; an empty token is the first page.
pub fn parse_token(token: &str) -> Result<Option<Key>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = |why: String| Error::InvalidArgument(format!("bad page token {:?}: {why}", truncated(token)));
    let (ns, id) = token.split_once('/').ok_or_else(|| bad("not from a previous response".into()))?;
    let ns = Namespace::new(ns).map_err(|e| bad(e.to_string()))?;
    let id = ContainerId::new(id).map_err(|e| bad(e.to_string()))?;
    Ok(Some((ns, id)))
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Sorts `items` by key and keeps those after `after` (all without it).
pub fn sorted_after<T>(mut items: Vec<T>, key: impl Fn(&T) -> Key, after: Option<&Key>) -> Vec<T> {
    items.sort_by_cached_key(&key);
    match after {
        Some(a) => items.into_iter().filter(|i| key(i) > *a).collect(),
        None => items,
    }
}

/// Named ids in the caller's order, each once, resuming after `after`
/// (which must be one of them).
pub fn ids_after(ids: Vec<ContainerId>, after: Option<&ContainerId>) -> Result<Vec<ContainerId>> {
    let mut seen = std::collections::HashSet::new();
    let ids: Vec<ContainerId> = ids.into_iter().filter(|id| seen.insert(id.clone())).collect();
    let Some(after) = after else { return Ok(ids) };
    match ids.iter().position(|id| id == after) {
        Some(i) => Ok(ids[i + 1..].to_vec()),
        None => Err(Error::InvalidArgument(format!("page token names {after}, which the request does not"))),
    }
}

/// Bytes an item adds to a response as an element of a repeated message
/// field: tag, length and the message itself.
pub fn item_len(m: &impl prost::Message) -> usize {
    let n = m.encoded_len();
    1 + prost::length_delimiter_len(n) + n
}

/// One page being filled.
pub struct Pager<T> {
    items: Vec<T>,
    last: Option<Key>,
    bytes: usize,
    max_items: usize,
    budget: usize,
    /// An item was refused: more follow.
    full: bool,
}

impl<T> Pager<T> {
    /// A page of at most `page_size` items (0: no count limit) and
    /// [`PAGE_BUDGET`] bytes.
    pub fn new(page_size: u32) -> Pager<T> {
        Self::with_budget(page_size, PAGE_BUDGET)
    }

    pub fn with_budget(page_size: u32, budget: usize) -> Pager<T> {
        let max_items = if page_size == 0 { usize::MAX } else { page_size as usize };
        Pager { items: Vec::new(), last: None, bytes: 0, max_items, budget, full: false }
    }

    /// Adds the next item (`size` encoded bytes, see [`item_len`]) unless
    /// the page is full; false means it was not added and the page ends.
    pub fn push(&mut self, key: Key, item: T, size: usize) -> bool {
        let over = self.items.len() >= self.max_items || self.bytes.saturating_add(size) > self.budget;
        if self.full || (over && !self.items.is_empty()) {
            self.full = true;
            return false;
        }
        self.bytes = self.bytes.saturating_add(size);
        self.items.push(item);
        self.last = Some(key);
        true
    }

    /// The items, and the token of the next page (empty on the last one).
    pub fn finish(self) -> (Vec<T>, String) {
        let next = match (&self.last, self.full) {
            (Some(last), true) => token(last),
            _ => String::new(),
        };
        (self.items, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, id: &str) -> Key {
        (Namespace::new(ns).unwrap(), ContainerId::new(id).unwrap())
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_invalid_argument() {
        let k = key("a-b.c", "web_1");
        assert_eq!(parse_token(&token(&k)).unwrap(), Some(k));
        assert_eq!(parse_token("").unwrap(), None);
        for bad in ["nokey", "ns/../x", "/id", "ns/", "a/b/c"] {
            let e = parse_token(bad).unwrap_err();
            assert_eq!(e.code(), berth_model::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn order_is_namespace_then_id_and_resumes_after_the_token() {
        // As strings "a-b/x" < "a/y", but namespace "a" comes before "a-b".
        let keys = vec![key("a-b", "x"), key("a", "y"), key("a", "b"), key("b", "a")];
        let all = sorted_after(keys.clone(), Clone::clone, None);
        assert_eq!(all, vec![key("a", "b"), key("a", "y"), key("a-b", "x"), key("b", "a")]);
        let rest = sorted_after(keys.clone(), Clone::clone, Some(&key("a", "y")));
        assert_eq!(rest, vec![key("a-b", "x"), key("b", "a")]);
        // The item named by the token may be gone: the next one follows.
        let rest = sorted_after(keys, Clone::clone, Some(&key("a", "c")));
        assert_eq!(rest, vec![key("a", "y"), key("a-b", "x"), key("b", "a")]);
    }

    #[test]
    fn named_ids_keep_their_order_once_each() {
        let id = |s: &str| ContainerId::new(s).unwrap();
        let ids = vec![id("c"), id("a"), id("c"), id("b")];
        assert_eq!(ids_after(ids.clone(), None).unwrap(), vec![id("c"), id("a"), id("b")]);
        assert_eq!(ids_after(ids.clone(), Some(&id("a"))).unwrap(), vec![id("b")]);
        assert_eq!(ids_after(ids.clone(), Some(&id("b"))).unwrap(), vec![]);
        assert!(ids_after(ids, Some(&id("zz"))).is_err());
    }

    /// Fills pages of `sizes` the way the List handler does.
    fn pages(sizes: &[usize], page_size: u32, budget: usize) -> Vec<Vec<usize>> {
        let items: Vec<(Key, usize)> =
            sizes.iter().enumerate().map(|(i, s)| (key("ns", &format!("c{i:03}")), *s)).collect();
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let mut page = Pager::with_budget(page_size, budget);
            for (k, s) in sorted_after(items.clone(), |i| i.0.clone(), after.as_ref()) {
                if !page.push(k, s, s) {
                    break;
                }
            }
            let (got, next) = page.finish();
            assert!(!got.is_empty() || out.is_empty(), "an empty page after the first");
            out.push(got);
            if next.is_empty() {
                return out;
            }
            after = parse_token(&next).unwrap();
        }
    }

    #[test]
    fn pages_stay_within_the_budget_and_lose_nothing() {
        let sizes: Vec<usize> = (0..40).map(|i| 100 + (i * 37) % 300).collect();
        let got = pages(&sizes, 0, 1000);
        assert!(got.len() > 1);
        for p in &got {
            assert!(p.iter().sum::<usize>() <= 1000, "{p:?}");
        }
        assert_eq!(got.concat(), sizes);
    }

    #[test]
    fn page_size_limits_the_count() {
        let sizes = vec![1; 10];
        let got = pages(&sizes, 4, usize::MAX);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        // Exactly full, nothing left: no next page.
        assert_eq!(pages(&[1; 4], 4, usize::MAX).len(), 1);
        assert_eq!(pages(&[], 0, 10), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn an_item_bigger_than_the_budget_gets_a_page_of_its_own() {
        assert_eq!(pages(&[5, 50, 5, 5], 0, 20), vec![vec![5], vec![50], vec![5, 5]]);
    }

    #[test]
    fn item_len_counts_tag_and_length() {
        let c = berth_api::v1::Container { id: "x".repeat(200), ..Default::default() };
        let resp = berth_api::v1::ListResponse { containers: vec![c.clone(), c.clone()], ..Default::default() };
        assert_eq!(prost::Message::encoded_len(&resp), 2 * item_len(&c));
    }
}
