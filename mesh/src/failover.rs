//! Leader failover in seconds, agreed by every node without talking.
//!
//! Kilo replaces a dead leader only once its check-ins are 60 s old, blind to
//! the data path (Kilo issue #489). Here the nodes of a segment watch their
//! leader candidates directly: each Weft agent pings the first
//! [`CANDIDATES`] candidates of its segment over the private network and
//! publishes the ones that stopped answering (`weft.dev/unreachable` on its
//! own Node). Every node reads the same reports through the API and applies
//! the same rule, so they agree on the new leader within a watch event:
//!
//! - a candidate is *down* when a majority of the segment's other
//!   reporting nodes report it, not counting reports between two nodes that
//!   report each other (a cut between two nodes says nothing about either);
//!   so a segment fails over in seconds while most of its nodes see each
//!   other, and by Kilo's 60 s rule when most of it is gone at once;
//! - the leader is the first candidate in Kilo's order that is not down
//!   (the user's `kilo.squat.ai/leader` first, as in Kilo); if all are down,
//!   Kilo's choice stands.
//!
//! Reports move leadership only; a down node keeps its place in the segment
//! (its pods' routes), and it leaves the mesh only by Kilo's 60 s rule.
//! Nodes that do not report (Kilo nodes) are neither voters nor needed: a
//! cluster of Kilo nodes behaves exactly as Kilo.

use super::model::Node;
use std::net::IpAddr;

/// How many candidates, in leader order, each node watches. A segment
/// fails over as long as one of them is alive.
pub const CANDIDATES: usize = 3;

/// Kilo's leader preference as an order over a segment's name-sorted
/// nodes: annotated leaders with a public endpoint, other annotated ones,
/// others with a public endpoint, the rest; by name within each rank.
pub fn leader_order(nodes: &[Node]) -> Vec<usize> {
    let rank = |n: &Node| match (n.leader, n.has_public_endpoint()) {
        (true, true) => 0,
        (true, false) => 1,
        (false, true) => 2,
        (false, false) => 3,
    };
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    // Stable: the name order of `nodes` breaks ties.
    order.sort_by_key(|&i| rank(&nodes[i]));
    order
}

/// Whether `candidate` is down by the reports of the other nodes.
fn reported_down(nodes: &[Node], candidate: usize) -> bool {
    let c = &nodes[candidate];
    let mut voters = 0;
    let mut votes = 0;
    for (i, n) in nodes.iter().enumerate() {
        let Some(reports) = n.unreachable.as_ref().filter(|_| i != candidate) else {
            continue;
        };
        voters += 1;
        let mutual = c.unreachable.as_ref().is_some_and(|r| r.contains(&n.name));
        if reports.contains(&c.name) && !mutual {
            votes += 1;
        }
    }
    votes > 0 && votes * 2 > voters
}

/// The segment's leader: the first candidate in [`leader_order`] that is not
/// reported down, else Kilo's choice.
pub fn choose_leader(nodes: &[Node]) -> usize {
    let order = leader_order(nodes);
    order
        .iter()
        .take(CANDIDATES)
        .copied()
        .find(|&i| !reported_down(nodes, i))
        .or_else(|| order.get(CANDIDATES).copied())
        .or_else(|| order.first().copied())
        .unwrap_or(0)
}

/// Which nodes `me` watches in its segment (`nodes`, name-sorted): the first
/// [`CANDIDATES`] candidates other than itself that have a private address,
/// as (name, address).
pub fn watch_list(nodes: &[Node], me: &str) -> Vec<(String, IpAddr)> {
    leader_order(nodes)
        .into_iter()
        .map(|i| &nodes[i])
        .filter(|n| n.name != me)
        .take(CANDIDATES)
        .filter_map(|n| Some((n.name.clone(), n.internal_ip?.addr())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::node;
    use std::collections::BTreeSet;

    /// Nodes a, b, c, ... on one private subnet; `reports[i]` is what node i
    /// publishes (`None`: a Kilo node).
    fn segment(reports: &[Option<&[&str]>]) -> Vec<Node> {
        reports
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let name = ((b'a' + i as u8) as char).to_string();
                let mut n = node(
                    &name,
                    "aws",
                    &format!("3.0.0.{}:51820", i + 1),
                    Some(&format!("10.0.0.{}/24", i + 1)),
                    &format!("10.42.{i}.0/24"),
                    false,
                );
                n.unreachable =
                    r.map(|names| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
                n
            })
            .collect()
    }

    fn leader(reports: &[Option<&[&str]>]) -> String {
        let nodes = segment(reports);
        nodes[choose_leader(&nodes)].name.clone()
    }

    #[test]
    fn without_reports_kilo_decides() {
        assert_eq!(leader(&[Some(&[]), Some(&[]), Some(&[])]), "a");
        assert_eq!(leader(&[None, None]), "a", "a Kilo-only segment is Kilo's");
        let mut nodes = segment(&[Some(&[]), Some(&[]), Some(&[])]);
        nodes[2].leader = true;
        assert_eq!(
            nodes[choose_leader(&nodes)].name,
            "c",
            "the user's choice wins"
        );
    }

    #[test]
    fn a_dead_leader_is_replaced_by_the_next_candidate() {
        // a died: b and c cannot reach it (a's own report is what it last
        // wrote: nothing).
        assert_eq!(leader(&[Some(&[]), Some(&["a"]), Some(&["a"])]), "b");
        // Two nodes: the survivor's word is the majority.
        assert_eq!(leader(&[Some(&[]), Some(&["a"])]), "b");
        // Two of three dead: the survivor alone is no majority (it could be
        // the one cut off), so Kilo's 60 s rule decides.
        assert_eq!(leader(&[Some(&[]), Some(&[]), Some(&["a", "b"])]), "a");
        // An isolated node's reports do not block the others' verdict.
        assert_eq!(
            leader(&[
                Some(&[]),
                Some(&["a", "d"]),
                Some(&["a", "d"]),
                Some(&["a", "b", "c"])
            ]),
            "b"
        );
        // The user's leader, when down, gives way too.
        let mut nodes = segment(&[Some(&["c"]), Some(&["c"]), Some(&[])]);
        nodes[2].leader = true;
        assert_eq!(nodes[choose_leader(&nodes)].name, "a");
    }

    #[test]
    fn one_voice_is_not_a_majority() {
        // Only c lost a: c's link is the problem, not a.
        assert_eq!(leader(&[Some(&[]), Some(&[]), Some(&["a"])]), "a");
        // A Kilo node does not vote, but it does not block either.
        assert_eq!(leader(&[Some(&[]), Some(&["a"]), None]), "b");
    }

    #[test]
    fn a_cut_between_two_nodes_moves_nothing() {
        assert_eq!(leader(&[Some(&["b"]), Some(&["a"])]), "a");
        assert_eq!(leader(&[Some(&["b"]), Some(&["a"]), Some(&[])]), "a");
    }

    #[test]
    fn everyone_watches_the_first_candidates() {
        let nodes = segment(&[Some(&[]), Some(&[]), Some(&[]), Some(&[]), Some(&[])]);
        let names = |me: &str| -> Vec<String> {
            watch_list(&nodes, me).into_iter().map(|(n, _)| n).collect()
        };
        assert_eq!(names("e"), ["a", "b", "c"]);
        assert_eq!(names("a"), ["b", "c", "d"]);
        assert_eq!(watch_list(&nodes, "e")[0].1.to_string(), "10.0.0.1");
    }
}
