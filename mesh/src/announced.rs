//! The mesh-wide options a cluster's agents announce on their Nodes (Kilo's
//! `wireguard-ip` and `granularity` annotations). A reader that was not
//! given the cluster's flags (`weftctl`, like Kilo's `kgctl`) goes by them:
//! a cluster whose agents run `--subnet 10.14.0.0/16` has leaders at
//! 10.14.0.x, and computing the mesh with the default pool would print
//! addresses no tunnel holds. An agent compares them with its own flags,
//! since nodes that disagree compute different meshes.

use crate::model::{Granularity, Loaded, MeshOptions};
use ipnet::IpNet;
use std::fmt::Display;

/// What each node announces, in the backend's (name) order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Announced {
    /// The pool each leader's WireGuard address comes from: the network of
    /// its `wireguard-ip` (10.14.0.1/16 announces 10.14.0.0/16).
    pub subnets: Vec<(String, IpNet)>,
    pub granularities: Vec<(String, Granularity)>,
}

/// Options a reader was given; `None` is "as the cluster says".
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Given {
    pub subnet: Option<IpNet>,
    pub granularity: Option<Granularity>,
}

impl Announced {
    /// Records what `node` announces: a leader's non-empty `wireguard-ip`,
    /// and its `granularity`. Values that do not parse are left out (the
    /// node's own record reports its bad fields).
    pub fn add(&mut self, node: &str, wireguard_ip: Option<&str>, granularity: Option<&str>) {
        if let Some(ip) = wireguard_ip.and_then(|v| v.trim().parse::<IpNet>().ok()) {
            self.subnets.push((node.to_string(), ip.trunc()));
        }
        if let Some(g) = granularity.and_then(|v| v.trim().parse().ok()) {
            self.granularities.push((node.to_string(), g));
        }
    }

    /// `defaults` with every option not `given` taken from what the nodes
    /// announce (the value most of them announce where they differ), and a
    /// sentence for each value guessed or disputed.
    pub fn resolve(&self, given: Given, defaults: &MeshOptions) -> (MeshOptions, Vec<String>) {
        let mut options = defaults.clone();
        let mut notes = Vec::new();
        options.subnet = given.subnet.unwrap_or_else(|| {
            let (v, note) = most_announced(
                "WireGuard subnet",
                "--subnet",
                &self.subnets,
                defaults.subnet,
            );
            notes.extend(note);
            v
        });
        options.granularity = given.granularity.unwrap_or_else(|| {
            let (v, note) = most_announced(
                "mesh granularity",
                "--mesh-granularity",
                &self.granularities,
                defaults.granularity,
            );
            notes.extend(note);
            v
        });
        (options, notes)
    }

    /// The nodes other than `me` whose announcements differ from
    /// `options` (an agent's own flags; its own node's annotations may
    /// still carry those of its previous run), as one sentence per option,
    /// or none when all agree.
    pub fn disagreements(&self, options: &MeshOptions, me: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = differing("subnet", "--subnet", &self.subnets, options.subnet, me) {
            out.push(s);
        }
        if let Some(s) = differing(
            "granularity",
            "--mesh-granularity",
            &self.granularities,
            options.granularity,
            me,
        ) {
            out.push(s);
        }
        out
    }
}

impl Loaded {
    /// Fills in the options not `given` from what the nodes announce (see
    /// [`Announced::resolve`]); a sentence for each value guessed or
    /// disputed.
    pub fn resolve_options(&mut self, given: Given) -> Vec<String> {
        let (options, notes) = self.announced.resolve(given, &self.options);
        self.options = options;
        notes
    }
}

/// The value most nodes announce (the first announced among equals), with
/// a note when nodes differ or none announces one.
fn most_announced<T: PartialEq + Copy + Display>(
    what: &str,
    flag: &str,
    seen: &[(String, T)],
    default: T,
) -> (T, Option<String>) {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for (_, v) in seen {
        match counts.iter_mut().find(|(c, _)| c == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((*v, 1)),
        }
    }
    let Some(&(most, _)) = counts
        .iter()
        .reduce(|best, c| if c.1 > best.1 { c } else { best })
    else {
        return (
            default,
            Some(format!(
                "no node announces its {what}; assuming {default} (give {flag} if the cluster's agents use another)"
            )),
        );
    };
    if counts.len() == 1 {
        return (most, None);
    }
    let all = seen
        .iter()
        .map(|(n, v)| format!("{n}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    (
        most,
        Some(format!(
            "the nodes announce different values for the {what} ({all}); using {most}, which most announce (give {flag} to choose)"
        )),
    )
}

fn differing<T: PartialEq + Copy + Display>(
    what: &str,
    flag: &str,
    seen: &[(String, T)],
    mine: T,
    me: &str,
) -> Option<String> {
    let others: Vec<String> = seen
        .iter()
        .filter(|(n, v)| n != me && *v != mine)
        .map(|(n, v)| format!("{n} announces {v}"))
        .collect();
    (!others.is_empty()).then(|| {
        format!(
            "this agent's {flag} is {mine} but {}: nodes with different {what}s compute different meshes",
            others.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_cluster_on_another_subnet_is_read_as_it_is() {
        let mut a = Announced::default();
        a.add("b-1", Some("10.14.0.1/16"), Some("location"));
        a.add("b-2", Some(""), Some("location"));
        a.add("b-3", None, None);
        a.add("b-4", Some("10.14.0.2/16"), Some("location"));
        assert_eq!(a.subnets.len(), 2, "an empty wireguard-ip is no leader");
        let (o, notes) = a.resolve(Given::default(), &MeshOptions::default());
        assert_eq!(o.subnet, net("10.14.0.0/16"));
        assert_eq!(o.granularity, Granularity::Location);
        assert!(notes.is_empty(), "{notes:?}");
        // Flags win, silently.
        let (o, notes) = a.resolve(
            Given {
                subnet: Some(net("10.9.0.0/24")),
                granularity: Some(Granularity::Full),
            },
            &MeshOptions::default(),
        );
        assert_eq!(
            (o.subnet, o.granularity),
            (net("10.9.0.0/24"), Granularity::Full)
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn a_guess_and_a_dispute_are_said() {
        let (o, notes) = Announced::default().resolve(Given::default(), &MeshOptions::default());
        assert_eq!(o, MeshOptions::default());
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("assuming 10.4.0.0/16"), "{}", notes[0]);
        assert!(notes[1].contains("assuming location"), "{}", notes[1]);

        let mut a = Announced::default();
        a.add("a", Some("10.4.0.1/16"), Some("full"));
        a.add("b", Some("10.14.0.1/16"), Some("cross"));
        a.add("c", Some("10.14.0.2/16"), Some("cross"));
        a.add("d", Some("not an ip"), Some("sideways"));
        let (o, notes) = a.resolve(Given::default(), &MeshOptions::default());
        assert_eq!(o.subnet, net("10.14.0.0/16"));
        assert_eq!(o.granularity, Granularity::Cross);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("a: 10.4.0.0/16, b: 10.14.0.0/16, c: 10.14.0.0/16"),
            "{}",
            notes[0]
        );
    }

    #[test]
    fn an_agent_hears_of_nodes_that_disagree() {
        let mut a = Announced::default();
        a.add("kilo-1", Some("10.14.0.1/16"), Some("location"));
        a.add("weft-1", Some("10.4.0.2/16"), Some("location"));
        a.add("me", Some("10.9.0.1/16"), Some("full"));
        let d = a.disagreements(&MeshOptions::default(), "me");
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].contains("--subnet is 10.4.0.0/16 but kilo-1 announces 10.14.0.0/16"),
            "{}",
            d[0]
        );
        let mut same = Announced::default();
        same.add("weft-1", Some("10.4.0.1/16"), Some("location"));
        assert!(same.disagreements(&MeshOptions::default(), "me").is_empty());
    }
}
