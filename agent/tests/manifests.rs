//! The install manifests parsed into typed Kubernetes objects: least
//! privilege RBAC, a DaemonSet that runs everywhere with only the
//! capabilities it needs, paths that match the agent's flags and the CNI
//! runtime's defaults, flags the agent knows; and the scripts the image runs
//! at install time, run for real on temporary directories.

mod common;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every document of a manifest, by kind.
fn documents(file: &str) -> BTreeMap<String, Vec<Value>> {
    let text = std::fs::read_to_string(repo().join("manifests").join(file)).unwrap();
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let yaml: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
        let v: Value = serde_json::to_value(yaml).expect("JSON-shaped YAML");
        let kind = v["kind"]
            .as_str()
            .expect("every document has a kind")
            .to_string();
        out.entry(kind).or_default().push(v);
    }
    out
}

/// Parses into the typed object and back: a field the type does not know
/// (a typo) would be dropped, so the round trip must give the same JSON.
fn typed<T: DeserializeOwned + Serialize>(v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).expect("parses as the typed object");
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(&back, v, "fields the Kubernetes type does not know");
    t
}

fn one<T: DeserializeOwned + Serialize>(docs: &BTreeMap<String, Vec<Value>>, kind: &str) -> T {
    let list = docs.get(kind).unwrap_or_else(|| panic!("no {kind}"));
    assert_eq!(list.len(), 1, "one {kind}");
    typed(&list[0])
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn agent_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-agent"))
        .arg("--help")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn arg_value<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
    c.args
        .as_ref()?
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
}

/// Where a volume is mounted in a container, and the volume's host path.
fn mounts(ds: &DaemonSet, c: &Container) -> BTreeMap<String, Option<String>> {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let vols = spec.volumes.as_ref().unwrap();
    c.volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| {
            let v = vols
                .iter()
                .find(|v| v.name == m.name)
                .unwrap_or_else(|| panic!("mount {} names no volume", m.name));
            (
                m.mount_path.clone(),
                v.host_path.as_ref().map(|h| h.path.clone()),
            )
        })
        .collect()
}

fn container<'a>(list: &'a [Container], name: &str) -> &'a Container {
    list.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Which manifest: Weft as the CNI on k3s or kubeadm, or as an add-on
/// over k3s's flannel.
#[derive(Clone, Copy, PartialEq)]
enum Flavour {
    K3s,
    Kubeadm,
    K3sAddon,
}

fn check(file: &str, flavour: Flavour) {
    let k3s = flavour != Flavour::Kubeadm;
    let addon = flavour == Flavour::K3sAddon;
    let docs = documents(file);
    let kinds: BTreeSet<&str> = docs.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Role",
            "RoleBinding",
            "ServiceAccount"
        ])
    );

    // RBAC: exactly what the agent uses.
    let sa: ServiceAccount = one(&docs, "ServiceAccount");
    let sa_name = sa.metadata.name.clone().unwrap();
    let sa_ns = sa.metadata.namespace.clone().unwrap();
    let cr: ClusterRole = one(&docs, "ClusterRole");
    assert_eq!(
        cr.rules.unwrap(),
        [
            rule(&[""], &["nodes"], &["get", "list", "watch", "patch"]),
            rule(&["kilo.squat.ai"], &["peers"], &["get", "list", "watch"]),
        ]
    );
    let role: Role = one(&docs, "Role");
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some("default"),
        "Events of Nodes and Peers live in default"
    );
    assert_eq!(
        role.rules.unwrap(),
        [rule(&["events.k8s.io"], &["events"], &["create", "patch"])]
    );
    let crb: ClusterRoleBinding = one(&docs, "ClusterRoleBinding");
    assert_eq!(crb.role_ref.name, cr.metadata.name.unwrap());
    let rb: RoleBinding = one(&docs, "RoleBinding");
    assert_eq!(rb.role_ref.name, role.metadata.name.unwrap());
    for subjects in [crb.subjects.unwrap(), rb.subjects.unwrap()] {
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, sa_name);
        assert_eq!(subjects[0].namespace.as_deref(), Some(sa_ns.as_str()));
    }

    // The DaemonSet.
    let ds: DaemonSet = one(&docs, "DaemonSet");
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(sa_name.as_str()));
    assert_eq!(pod.host_network, Some(true));
    let tolerations = pod.tolerations.clone().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint, NotReady included"
    );
    assert_eq!(pod.containers.len(), 2, "the tunnel and the agent");
    let agent = container(&pod.containers, "weft-agent");
    let tunnel = container(&pod.containers, "weft-tunnel");
    let caps = |c: &Container| {
        let sc = c.security_context.clone().unwrap();
        assert_ne!(sc.privileged, Some(true), "{} not privileged", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop.unwrap(), ["ALL"], "{}", c.name);
        caps.add.unwrap()
    };
    assert_eq!(caps(agent), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps(tunnel), ["NET_ADMIN"]);
    let env = agent.env.clone().unwrap();
    let field = |name: &str| -> String {
        env.iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path
            .clone()
    };
    assert_eq!(field("NODE_NAME"), "spec.nodeName");
    // Metrics and health on the node's own address, as the kubelet's
    // probes reach a host-network pod.
    assert_eq!(field("HOST_IP"), "status.hostIP");
    assert_eq!(arg_value(agent, "--listen"), Some("$(HOST_IP):1107"));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(probe_path(&agent.readiness_probe), "/readyz");
    assert_eq!(probe_path(&agent.liveness_probe), "/healthz");
    if !k3s {
        let api = env
            .iter()
            .find(|e| e.name == "WEFT_API_SERVER")
            .expect("the API server's address, settable once");
        let r = api
            .value_from
            .as_ref()
            .unwrap()
            .config_map_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (r.name.as_str(), r.key.as_str(), r.optional),
            ("weft", "api-server", Some(true))
        );
    }
    // A rolling update starts the new pod first, so that its tunnel takes
    // the old one's over.
    let ru = ds
        .spec
        .as_ref()
        .unwrap()
        .update_strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .clone()
        .unwrap();
    assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));

    // The tunnel: weft-wg with flags it knows, taking over and lingering,
    // its control socket where the agent looks, on a directory both share
    // (and the next pod too: a host path).
    assert_eq!(tunnel.command.as_ref().unwrap(), &["weft-wg"]);
    let wg_help = String::from_utf8(
        Command::new(common::sibling_binary("weft-wg", "dataplane"))
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let targs = tunnel.args.clone().unwrap();
    for a in &targs[..targs.len() - 1] {
        let flag = a.split('=').next().unwrap();
        assert!(wg_help.contains(flag), "weft-wg has no {flag}");
    }
    // And it parses them as spelled: options are read in order, so an
    // option it cannot parse fails before the trailing --help answers.
    let parsed = Command::new(common::sibling_binary("weft-wg", "dataplane"))
        .args(&targs[..targs.len() - 1])
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "weft-wg refuses the manifest's arguments: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    assert_eq!(targs.last().map(String::as_str), Some("weft0"));
    assert!(targs.iter().any(|a| a == "--take-over") && targs.iter().any(|a| a == "--linger"));
    let control = arg_value(tunnel, "--control").unwrap();
    assert_eq!(arg_value(agent, "--control-socket"), Some(control));
    assert_eq!(arg_value(agent, "--tunnel"), Some("external"));
    let run_dir = Path::new(control).parent().unwrap().to_str().unwrap();
    assert_eq!(mounts(&ds, agent)[run_dir].as_deref(), Some(run_dir));
    let tm = mounts(&ds, tunnel);
    assert_eq!(tm[run_dir].as_deref(), Some(run_dir));
    assert_eq!(tm["/dev/net/tun"].as_deref(), Some("/dev/net/tun"));
    // The UAPI socket where the host's `wg` looks for it.
    let uapi = arg_value(tunnel, "--uapi-dir").unwrap();
    assert_eq!(tm[uapi].as_deref(), Some("/var/run/wireguard"));

    // Every flag is one weft-agent knows.
    let help = agent_help();
    for a in agent.args.as_ref().unwrap() {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} "))
                || help.contains(&format!("{flag}\n"))
                || help.contains(&format!("{flag} <"))
                || help.contains(&format!("{flag}[=")),
            "weft-agent has no {flag}"
        );
    }
    assert_eq!(arg_value(agent, "--backend"), Some("kubernetes"));
    assert_eq!(arg_value(agent, "--hostname"), Some("$(NODE_NAME)"));

    // Paths: state and CNI config where the flags say, on the host's
    // standard CNI directory; the TUN device from the host.
    let m = mounts(&ds, agent);
    let state = arg_value(agent, "--state-dir").unwrap();
    assert_eq!(m[state].as_deref(), Some("/var/lib/weft"));
    assert_eq!(m["/run/xtables.lock"].as_deref(), Some("/run/xtables.lock"));
    if addon {
        // Kilo's flannel add-on arguments; flannel's CNI wires the pods, so
        // nothing of Weft's touches the CNI directories.
        for (flag, value) in [
            ("--cni", "false"),
            ("--local", "false"),
            ("--compatibility", "flannel"),
            ("--internal-cidr", "$(HOST_IP)/32"),
        ] {
            assert_eq!(arg_value(agent, flag), Some(value), "{flag}");
        }
        assert_eq!(arg_value(agent, "--cni-dir"), None);
        assert!(!m.contains_key("/etc/cni/net.d") && !m.contains_key("/var/lib/cni/networks"));
        // And the agent takes them as spelled, once the kubelet has put
        // the node's values in.
        let args = agent.args.clone().unwrap().into_iter().map(|a| {
            a.replace("$(HOST_IP)", "10.0.0.5")
                .replace("$(NODE_NAME)", "node-1")
        });
        let parsed = weft_agent::flags::AgentArgs::try_parse_from(
            std::iter::once("weft-agent".to_string()).chain(args),
        )
        .expect("the add-on arguments parse");
        let o = parsed.backend.mesh_options();
        assert!(!parsed.cni() && !o.local);
        assert_eq!(parsed.internal_cidrs[0].to_string(), "10.0.0.5/32");
        assert_eq!(o.compatibility, weft_agent::mesh::Compatibility::Flannel);
    } else {
        let cni_dir = arg_value(agent, "--cni-dir").unwrap();
        assert_eq!(m[cni_dir].as_deref(), Some("/etc/cni/net.d"));
        // Kilo's allocations, where the agent looks for them on a migration.
        assert_eq!(
            m["/var/lib/cni/networks"].as_deref(),
            Some("/var/lib/cni/networks")
        );
    }
    let vols = pod.volumes.clone().unwrap();
    let tun = vols
        .iter()
        .find(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path == "/dev/net/tun")
        })
        .unwrap();
    assert_eq!(
        tun.host_path.as_ref().unwrap().type_.as_deref(),
        Some("CharDevice")
    );

    // The init containers: install-cni into the host's plugin dirs (not
    // as an add-on: flannel's plugins are k3s's own).
    let init = pod.init_containers.clone().unwrap();
    let install = init.iter().find(|c| c.name == "install-cni");
    if addon {
        assert!(install.is_none(), "an add-on installs no CNI plugin");
    } else {
        let install = install.expect("install-cni");
        let cmd = install.command.clone().unwrap();
        assert_eq!(cmd[0], "install-cni.sh");
        let im = mounts(&ds, install);
        let targets: Vec<Option<String>> = cmd[1..].iter().map(|d| im[d].clone()).collect();
        let mut want = vec![Some("/opt/cni/bin".to_string())];
        if k3s {
            want.push(Some("/var/lib/rancher/k3s/data/cni".to_string()));
        }
        assert_eq!(targets, want);
    }
    // One image for all containers.
    let images: BTreeSet<_> = init
        .iter()
        .chain(&pod.containers)
        .map(|c| c.image.clone())
        .collect();
    assert_eq!(images.len(), 1);
    // The scripts exist and the image installs them.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    for c in init
        .iter()
        .filter(|c| c.command.as_ref().unwrap()[0].ends_with(".sh"))
    {
        let script = &c.command.as_ref().unwrap()[0];
        assert!(repo().join("deploy").join(script).exists(), "{script}");
        assert!(
            dockerfile.contains(&format!("deploy/{script}")),
            "{script} not in the image"
        );
    }
    // Forwarding: the one privileged step, with flags the agent knows and
    // the agent's own way to the API.
    let fwd = init
        .iter()
        .find(|c| c.name == "forwarding")
        .expect("forwarding init");
    assert_eq!(
        fwd.security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    assert_eq!(fwd.command.as_ref().unwrap(), &["weft-agent"]);
    assert!(fwd
        .args
        .as_ref()
        .unwrap()
        .iter()
        .any(|a| a == "--enable-forwarding"));
    for a in fwd.args.as_ref().unwrap() {
        let flag = a.split('=').next().unwrap();
        assert!(help.contains(flag), "weft-agent has no {flag}");
    }
    assert_eq!(arg_value(fwd, "--hostname"), Some("$(NODE_NAME)"));
    assert_eq!(
        arg_value(fwd, "--kubeconfig"),
        arg_value(agent, "--kubeconfig")
    );
    assert_eq!(
        fwd.env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| &e.name)
            .collect::<Vec<_>>(),
        agent
            .env
            .as_ref()
            .unwrap()
            .iter()
            .filter(|e| e.name != "HOST_IP")
            .map(|e| &e.name)
            .collect::<Vec<_>>()
    );
    if k3s {
        let kc = init
            .iter()
            .find(|c| c.name == "kubeconfig")
            .expect("kubeconfig init");
        let out = &kc.command.as_ref().unwrap()[1];
        let kubeconfig = arg_value(agent, "--kubeconfig").unwrap();
        assert_eq!(out, kubeconfig);
        // The agent sees the emptyDir the init container wrote into.
        let dir = Path::new(kubeconfig).parent().unwrap().to_str().unwrap();
        assert!(m.contains_key(dir) && m[dir].is_none());
        let km = mounts(&ds, kc);
        assert_eq!(
            km["/var/lib/rancher/k3s/agent/kubelet.kubeconfig"].as_deref(),
            Some("/var/lib/rancher/k3s/agent/kubelet.kubeconfig")
        );
    } else {
        assert_eq!(
            arg_value(agent, "--kubeconfig"),
            None,
            "in-cluster configuration"
        );
    }
}

#[test]
fn k3s_manifest() {
    check("weft-k3s.yaml", Flavour::K3s);
}

#[test]
fn kubeadm_manifest() {
    check("weft-kubeadm.yaml", Flavour::Kubeadm);
}

#[test]
fn k3s_addon_manifest() {
    check("weft-k3s-addon.yaml", Flavour::K3sAddon);
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-deploy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn install_cni_script_copies_the_plugins() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempdir("install");
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for p in ["weft-cni", "portmap", "loopback"] {
        std::fs::write(src.join(p), format!("#!/bin/sh\necho {p}\n")).unwrap();
        std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let script = repo().join("deploy/install-cni.sh");
    let (a, b) = (d.join("opt/cni/bin"), d.join("k3s/cni"));
    let out = Command::new("sh")
        .arg(&script)
        .arg(&a)
        .arg(&b)
        .env("WEFT_CNI_SRC", &src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dir in [&a, &b] {
        for p in ["weft-cni", "portmap", "loopback"] {
            let meta = std::fs::metadata(dir.join(p)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{p}");
            let run = Command::new(dir.join(p)).output().unwrap();
            assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), p);
        }
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 3);
    }
    // A missing plugin in the image is a clear failure, not half an install.
    std::fs::remove_file(src.join("portmap")).unwrap();
    let c = d.join("c");
    let out = Command::new("sh")
        .arg(&script)
        .arg(&c)
        .env("WEFT_CNI_SRC", &src)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("portmap is missing"));
    assert!(!c.exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn k3s_kubeconfig_script_writes_a_kubeconfig_kube_reads() {
    let d = tempdir("kubeconfig");
    let agent = d.join("agent");
    let sa = d.join("sa");
    std::fs::create_dir_all(&agent).unwrap();
    std::fs::create_dir_all(&sa).unwrap();
    // The shape of k3s's kubelet.kubeconfig on an agent node.
    std::fs::write(
        agent.join("kubelet.kubeconfig"),
        "apiVersion: v1\nclusters:\n- cluster:\n    server: https://127.0.0.1:6444\n    certificate-authority: /var/lib/rancher/k3s/agent/server-ca.crt\n  name: local\ncontexts:\n- context:\n    cluster: local\n    namespace: default\n    user: user\n  name: Default\ncurrent-context: Default\nkind: Config\npreferences: {}\nusers:\n- name: user\n  user:\n    client-certificate: /var/lib/rancher/k3s/agent/client-kubelet.crt\n    client-key: /var/lib/rancher/k3s/agent/client-kubelet.key\n",
    )
    .unwrap();
    std::fs::write(agent.join("server-ca.crt"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(sa.join("token"), "token").unwrap();
    let out_dir = d.join("etc-weft");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out_file = out_dir.join("kubeconfig");
    let script = repo().join("deploy/k3s-kubeconfig.sh");
    let run = |agent_dir: &Path| {
        Command::new("sh")
            .arg(&script)
            .arg(&out_file)
            .env("K3S_AGENT_DIR", agent_dir)
            .env("SA_DIR", &sa)
            .output()
            .unwrap()
    };
    let out = run(&agent);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kc = kube::config::Kubeconfig::read_from(&out_file).expect("kube reads it");
    let cluster = kc.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6444"));
    assert_eq!(
        cluster.certificate_authority.as_deref(),
        Some(out_dir.join("server-ca.crt").to_str().unwrap())
    );
    assert!(out_dir.join("server-ca.crt").exists());
    let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
    assert_eq!(
        user.token_file.as_deref(),
        Some(sa.join("token").to_str().unwrap())
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Not a k3s node: a clear error.
    let out = run(&d.join("nowhere"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is this a k3s node?"));
    let _ = std::fs::remove_dir_all(&d);
}
