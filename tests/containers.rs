//! `containers/`: the Dockerfiles pass hadolint and copy only what exists;
//! the kustomize manifests render (kubectl kustomize) and pass
//! `kubernetes-validate --strict` for Kubernetes 1.34; every flag, port and
//! path they hand a Vagus container exists in `vagus … --help`, its mounts
//! or its image; and the scheduler's extender and the webhook they point
//! at answer at those paths when started with those flags.
//!
//! No Docker engine or API server runs here: the images are not built and
//! nothing is applied (see README.md, "On Kubernetes").

use crate::support::{Owned, Sim, admin_tokens, bin, start_brain_with};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs a validator; `None` (the check skipped) when it is not installed,
/// unless CI requires it.
fn tool(program: &str, args: &[&str]) -> Option<Output> {
    let required = std::env::var("VAGUS_REQUIRE_K8S_TOOLS").is_ok_and(|v| v == "1");
    match Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
    {
        Ok(o) => Some(o),
        Err(e) if !required => {
            eprintln!("skipping the {program} check: {e}");
            None
        }
        Err(e) => panic!("VAGUS_REQUIRE_K8S_TOOLS=1 but {program} does not run: {e}"),
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn dockerfiles() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("containers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".Dockerfile"))
        .collect();
    v.sort();
    assert_eq!(v.len(), 2, "{v:?}");
    v
}

/// A Dockerfile's instructions, continuation lines joined.
fn instructions(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let l = line.trim();
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        match l.strip_suffix('\\') {
            Some(part) => cur += part,
            None => {
                cur += l;
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

/// What the final stage of `path` puts in the image (COPY destinations).
fn image_paths(path: &Path) -> Vec<String> {
    let ins = instructions(path);
    let last = ins.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
    ins[last..]
        .iter()
        .filter(|i| i.starts_with("COPY "))
        .map(|i| i.split_whitespace().last().unwrap().to_string())
        .collect()
}

#[test]
fn dockerfiles_pass_hadolint_and_copy_only_what_exists() {
    let members: Vec<String> = {
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).unwrap()).unwrap();
        manifest["workspace"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().split('/').next().unwrap().to_string())
            .collect()
    };
    for df in dockerfiles() {
        let name = df.file_name().unwrap().to_string_lossy().to_string();
        if let Some(o) = tool("hadolint", &[df.to_str().unwrap()]) {
            assert!(o.status.success(), "hadolint {name}:\n{}", text(&o));
        }
        let mut copied = BTreeSet::new();
        for i in instructions(&df) {
            if let Some(from) = i.strip_prefix("FROM ") {
                let image = from.split_whitespace().next().unwrap();
                assert!(
                    image.contains(':') && !image.ends_with(":latest"),
                    "{name}: base {image} is not pinned"
                );
            }
            let Some(args) = i.strip_prefix("COPY ") else {
                continue;
            };
            if args.contains("--from=") {
                continue;
            }
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            for src in &words[..words.len() - 1] {
                assert!(
                    repo().join(src).exists(),
                    "{name}: COPY {src}: no such path in the repository"
                );
                copied.insert(src.to_string());
            }
        }
        // Cargo reads the whole workspace: every member must be there.
        for m in &members {
            assert!(
                copied.contains(m),
                "{name}: workspace member {m} is not copied"
            );
        }
        // The binaries it takes from the build are ones this workspace makes.
        for p in image_paths(&df) {
            let file = Path::new(&p).file_name().unwrap().to_str().unwrap();
            if file == "vagus" || file.ends_with(".so") {
                bin(file);
            }
        }
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context would hold target/"
    );
}

/// `kubectl kustomize DIR`, as JSON objects (PyYAML reads the YAML).
fn render(dir: &str) -> Option<(String, Vec<Value>)> {
    let o = tool("kubectl", &["kustomize", dir])?;
    assert!(o.status.success(), "kubectl kustomize {dir}:\n{}", text(&o));
    let yaml = String::from_utf8(o.stdout).unwrap();
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml, json; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    py.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "PyYAML: {}", text(&out));
    Some((yaml, serde_json::from_slice(&out.stdout).unwrap()))
}

#[test]
fn manifests_render_and_validate_for_kubernetes_1_34() {
    // Custom resources' schemas are not in kubernetes-validate: their kinds
    // are only warned about, and only these may be.
    let crds = ["Certificate", "Issuer", "ServiceMonitor", "PodMonitor"];
    for dir in [
        "containers/kubernetes/base",
        "containers/kubernetes/overlays/full",
        "containers/kubernetes/overlays/ha",
    ] {
        let Some((yaml, objects)) = render(dir) else {
            return;
        };
        let file = std::env::temp_dir().join(format!(
            "vagus-manifests-{}-{}.yaml",
            std::process::id(),
            dir.replace('/', "-")
        ));
        std::fs::write(&file, &yaml).unwrap();
        let Some(o) = tool(
            "kubernetes-validate",
            &["--strict", "-k", "1.34.0", file.to_str().unwrap()],
        ) else {
            return;
        };
        let out = text(&o);
        assert!(o.status.success(), "kubernetes-validate {dir}:\n{out}");
        for l in out.lines().filter(|l| !l.starts_with("INFO")) {
            assert!(
                crds.iter()
                    .any(|k| l.contains(&format!("schema for kind {k} "))),
                "{dir}: {l}"
            );
        }
        let passed = out.lines().filter(|l| l.starts_with("INFO")).count();
        assert_eq!(
            passed + out.lines().filter(|l| l.starts_with("WARN")).count(),
            objects.len(),
            "{out}"
        );
        let _ = std::fs::remove_file(&file);
        // The second scheduler reads the authentication config in kube-system.
        let reader = find(
            &objects,
            "RoleBinding",
            "vagus-scheduler-extension-apiserver-authentication-reader",
        );
        assert_eq!(reader["metadata"]["namespace"], "kube-system");
    }
}

#[test]
fn the_ha_overlay_runs_two_brains_on_postgres_and_routes_to_the_leader() {
    let Some((_, objects)) = render("containers/kubernetes/overlays/ha") else {
        return;
    };
    let brain = find(&objects, "Deployment", "vagus-brain");
    assert_eq!(brain["spec"]["replicas"], 2);
    // A new replica starts (and is ready, as a follower) before an old goes.
    assert_eq!(brain["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        brain["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let c = containers(brain)[0];
    let help = vagus_help("brain");
    let fl = flags(&c["args"].as_array().unwrap()[1..]);
    for (k, _) in &fl {
        assert!(
            help.contains(&format!("--{k} ")) || help.contains(&format!("--{k}\n")),
            "vagus brain has no --{k}"
        );
    }
    assert!(
        !fl.iter().any(|(k, _)| k == "audit" || k == "ledger"),
        "SQLite files beside the database: {fl:?}"
    );
    // The database's URL comes from a Secret, in the variable the brain reads.
    let env = c["env"].as_array().unwrap();
    let db = env
        .iter()
        .find(|e| e["name"] == "VAGUS_BRAIN_DATABASE")
        .expect("VAGUS_BRAIN_DATABASE");
    assert_eq!(db["valueFrom"]["secretKeyRef"]["name"], "vagus-database");
    assert!(help.contains("[env: VAGUS_BRAIN_DATABASE"), "{help}");
    // No volume for SQLite files: every mount has its volume, no claim.
    assert!(!objects.iter().any(|o| o["kind"] == "PersistentVolumeClaim"));
    let volumes: Vec<&Value> = brain["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["name"])
        .collect();
    for m in c["volumeMounts"].as_array().unwrap() {
        assert!(volumes.contains(&&m["name"]), "{m} has no volume");
    }
    // Requests reach the leader: the Service selects its label. Both
    // replicas are ready and alive (a follower answers 503 on every path).
    let svc = find(&objects, "Service", "vagus-brain");
    assert_eq!(svc["spec"]["selector"]["vagus.dev/leader"], "true");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["tcpSocket"]["port"], "http", "{probe}");
    }
    let pdb = find(&objects, "PodDisruptionBudget", "vagus-brain");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
}

#[test]
fn the_brains_role_grants_every_call_it_makes() {
    let Some((_, objects)) = render("containers/kubernetes/base") else {
        return;
    };
    // (API group, resource, verb) of every Kubernetes call in the brain:
    // vagus-kube's binder.rs (get, patch the pod; the Binding), executor.rs
    // (pods, Services, HTTPRoutes), leader.rs (the pods' leader label, the
    // Lease through kube-lease-manager), the brain's reflectors (list and
    // watch pods, Services, nodes).
    let calls = [
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "pods", "create"),
        ("", "pods", "patch"),
        ("", "pods", "delete"),
        ("", "pods/binding", "create"),
        ("", "services", "list"),
        ("", "services", "watch"),
        ("", "services", "create"),
        ("", "services", "delete"),
        ("gateway.networking.k8s.io", "httproutes", "patch"),
        ("gateway.networking.k8s.io", "httproutes", "delete"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "patch"),
    ];
    let rules: Vec<&Value> = ["ClusterRole", "Role"]
        .iter()
        .flat_map(|k| {
            objects.iter().filter(move |o| {
                o["kind"] == *k
                    && o["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .starts_with("vagus-brain")
            })
        })
        .flat_map(|r| r["rules"].as_array().unwrap())
        .collect();
    let has = |v: &Value, s: &str| v.as_array().unwrap().iter().any(|x| x == s);
    for (group, resource, verb) in calls {
        assert!(
            rules.iter().any(|r| has(&r["apiGroups"], group)
                && has(&r["resources"], resource)
                && has(&r["verbs"], verb)),
            "the brain's roles do not grant {verb} on {resource} ({group:?})"
        );
    }
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn vagus_help(sub: &str) -> String {
    let o = Command::new(bin("vagus"))
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(o.status.success(), "vagus {sub} --help");
    String::from_utf8(o.stdout).unwrap()
}

/// `--name=value` or `--name value` pairs.
fn flags(args: &[Value]) -> Vec<(String, Option<String>)> {
    let args: Vec<&str> = args.iter().map(|a| a.as_str().unwrap()).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if let Some(f) = args[i].strip_prefix("--") {
            match f.split_once('=') {
                Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
                None if args.get(i + 1).is_some_and(|n| !n.starts_with("--")) => {
                    out.push((f.to_string(), Some(args[i + 1].to_string())));
                    i += 1;
                }
                None => out.push((f.to_string(), None)),
            }
        }
        i += 1;
    }
    out
}

fn arg<'a>(flags: &'a [(String, Option<String>)], name: &str) -> &'a str {
    flags
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
        .unwrap_or_else(|| panic!("no --{name}"))
}

/// The pod template's containers (and init containers) of a workload.
fn containers(o: &Value) -> Vec<&Value> {
    let spec = &o["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect()
}

fn host_path(o: &Value, volume: &str) -> String {
    o["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume)
        .and_then(|v| v["hostPath"]["path"].as_str())
        .unwrap_or_else(|| panic!("no hostPath volume {volume}"))
        .to_string()
}

#[test]
fn manifests_pass_only_flags_ports_and_paths_that_exist() {
    let Some((_, objects)) = render("containers/kubernetes/base") else {
        return;
    };
    let images: Vec<(&str, Vec<String>)> = vec![
        (
            "vagus-agent",
            image_paths(&repo().join("containers/agent.Dockerfile")),
        ),
        (
            "vagus-brain",
            image_paths(&repo().join("containers/brain.Dockerfile")),
        ),
    ];
    let mut checked = 0;
    for o in &objects {
        for c in containers(o) {
            let image = c["image"].as_str().unwrap();
            let Some((_, in_image)) = images.iter().find(|(n, _)| image.contains(n)) else {
                continue;
            };
            let name = format!("{}/{}", o["metadata"]["name"], c["name"]);
            let mounts: Vec<&str> = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| m["mountPath"].as_str().unwrap())
                .collect();
            let is_there = |p: &str| {
                in_image.iter().any(|i| i == p)
                    || mounts.iter().any(|m| Path::new(p).starts_with(m))
            };
            if let Some(cmd) = c["command"].as_array() {
                // The init container's copy: from the image onto a mount.
                let words: Vec<&str> = cmd.iter().map(|w| w.as_str().unwrap()).collect();
                assert_eq!(words[0], "cp", "{name}");
                assert!(
                    in_image.iter().any(|i| i == words[1]),
                    "{name}: {} is not in the image",
                    words[1]
                );
                assert!(is_there(words[2]), "{name}: {} is on no mount", words[2]);
                checked += 1;
                continue;
            }
            let args = c["args"].as_array().unwrap();
            let sub = args[0].as_str().unwrap();
            let help = vagus_help(sub);
            let fl = flags(&args[1..]);
            for (k, v) in &fl {
                assert!(
                    help.contains(&format!("--{k} ")) || help.contains(&format!("--{k}\n")),
                    "{name}: vagus {sub} has no --{k}"
                );
                // The webhook's paths are other pods' (checked below).
                let elsewhere = ["shim-host-dir", "shim-dir", "segment-dir", "mps-pipe-dir"];
                if sub == "webhook" && elsewhere.contains(&k.as_str()) {
                    continue;
                }
                if let Some(v) = v.as_deref().filter(|v| v.starts_with('/')) {
                    assert!(
                        is_there(v),
                        "{name}: --{k} {v} is neither in the image nor on a mount"
                    );
                }
            }
            for p in c["ports"].as_array().into_iter().flatten() {
                let port = format!(":{}", p["containerPort"]);
                assert!(
                    fl.iter()
                        .any(|(_, v)| v.as_deref().is_some_and(|v| v.ends_with(&port))),
                    "{name}: port {port} is not one it listens on"
                );
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                if let Some(port) = c[probe]["httpGet"]["port"].as_str() {
                    assert!(
                        c["ports"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| p["name"] == port),
                        "{name}: {probe} names port {port}, which it does not have"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 4, "brain, agent (and its init container), webhook");
    // The webhook mounts into pods what the agent's DaemonSet puts on nodes.
    let agent = find(&objects, "DaemonSet", "vagus-agent");
    let agent_flags = flags(&containers(agent)[1]["args"].as_array().unwrap()[1..]);
    let webhook = find(&objects, "Deployment", "vagus-webhook");
    let hook = flags(&containers(webhook)[0]["args"].as_array().unwrap()[1..]);
    assert_eq!(arg(&hook, "shim-host-dir"), host_path(agent, "shim"));
    assert_eq!(arg(&hook, "segment-dir"), arg(&agent_flags, "segments"));
    assert_eq!(arg(&hook, "segment-dir"), host_path(agent, "segments"));
    assert_eq!(
        arg(&hook, "mps-pipe-dir"),
        arg(&agent_flags, "mps-pipe-dirs")
    );
    assert_eq!(
        format!("{}/libvagus_shim.so", arg(&hook, "shim-dir")),
        arg(&agent_flags, "shim")
    );
    // The brain's configuration file is one the brain loads.
    let cm = find(&objects, "ConfigMap", "vagus-brain-config");
    let sim = Sim::new("k8s-config");
    let cfg = sim.dir.join("brain.toml");
    std::fs::write(&cfg, cm["data"]["brain.toml"].as_str().unwrap()).unwrap();
    vagus_brain::load_core_config(Some(&cfg), None).expect("the ConfigMap's brain.toml");
}

/// POST `body` to `url` with curl (`--cacert` for HTTPS); the status and
/// the body.
fn post(url: &str, body: &str, ca: Option<&Path>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"]);
    if let Some(ca) = ca {
        c.arg("--cacert").arg(ca);
    }
    let o = c
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            url,
        ])
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_scheduler_and_the_api_server_find_the_brain_and_the_webhook_where_the_manifests_say() {
    let Some((_, objects)) = render("containers/kubernetes/base") else {
        return;
    };
    let sim = Sim::new("k8s-paths");
    // kube-scheduler's configuration: the extender is the brain Service's
    // scheduler port, every verb set, the node cache on.
    let cm = find(&objects, "ConfigMap", "vagus-scheduler-config");
    let cfg_yaml = cm["data"]["scheduler-config.yaml"].as_str().unwrap();
    let cfg: Value = {
        let mut py = Command::new("python3")
            .args([
                "-c",
                "import sys, yaml, json; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        py.stdin
            .take()
            .unwrap()
            .write_all(cfg_yaml.as_bytes())
            .unwrap();
        serde_json::from_slice(&py.wait_with_output().unwrap().stdout).unwrap()
    };
    let ext = &cfg["extenders"][0];
    let svc = find(&objects, "Service", "vagus-brain");
    let port = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "scheduler")
        .unwrap()["port"]
        .clone();
    let prefix = format!("http://vagus-brain.vagus.svc:{port}");
    let url = ext["urlPrefix"].as_str().unwrap();
    let path = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url} is not {prefix}/…"));
    assert_eq!(ext["nodeCacheCapable"], true);
    let webhook = find(&objects, "Deployment", "vagus-webhook");
    let hook = flags(&containers(webhook)[0]["args"].as_array().unwrap()[1..]);
    assert_eq!(
        cfg["profiles"][0]["schedulerName"].as_str().unwrap(),
        arg(&hook, "scheduler-name")
    );
    let sched = find(&objects, "Deployment", "vagus-scheduler");
    let config_flag = containers(sched)[0]["command"][1].as_str().unwrap();
    let mount = containers(sched)[0]["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap();
    assert_eq!(
        config_flag,
        format!("--config={mount}/scheduler-config.yaml")
    );
    // The brain, started with the manifest's flags for the extender, answers
    // every verb at that path.
    let tokens = admin_tokens(&sim, "k8s-paths-admin-token-01");
    let b = start_brain_with(
        &sim,
        &[
            "--http",
            "127.0.0.1:0",
            "--tokens",
            &tokens,
            "--scheduler",
            "127.0.0.1:0",
        ],
    );
    let at = b
        .wait_for(Duration::from_secs(30), |v| v["event"] == "scheduler")
        .expect("the brain did not start its extender")["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let pod = r#"{"metadata":{"name":"p","namespace":"n"},"spec":{"containers":[{"name":"c"}]}}"#;
    for verb in ["filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb"] {
        let v = ext[verb].as_str().unwrap();
        let body = match verb {
            "bindVerb" => {
                r#"{"PodName":"p","PodNamespace":"n","PodUID":"u","Node":"x"}"#.to_string()
            }
            "preemptVerb" => format!(r#"{{"Pod":{pod},"NodeNameToMetaVictims":{{}}}}"#),
            _ => format!(r#"{{"Pod":{pod},"NodeNames":["x"]}}"#),
        };
        let (s, r) = post(&format!("http://{at}{path}/{v}"), &body, None);
        assert_eq!(s, 200, "{verb} {v}: {r}");
    }
    // The webhook, started with the manifest's flags (its address and
    // certificate made local), answers the configuration's service path.
    let mwc = find(&objects, "MutatingWebhookConfiguration", "vagus");
    let w = &mwc["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["sideEffects"], "None");
    let wsvc = find(
        &objects,
        "Service",
        w["clientConfig"]["service"]["name"].as_str().unwrap(),
    );
    assert_eq!(
        wsvc["spec"]["ports"][0]["port"],
        w["clientConfig"]["service"]["port"]
    );
    let certs = sim.dir.join("certs");
    let o = Command::new(bin("vagus"))
        .args([
            "certs",
            "init",
            "--dir",
            certs.to_str().unwrap(),
            "--agents",
            "localhost",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut args: Vec<String> = vec!["webhook".into()];
    for (k, v) in &hook {
        let v = match k.as_str() {
            "listen" => "127.0.0.1:0".to_string(),
            "cert" => certs.join("localhost.pem").display().to_string(),
            "key" => certs.join("localhost.key").display().to_string(),
            _ => v.clone().unwrap(),
        };
        args.push(format!("--{k}={v}"));
    }
    let mut child = Command::new(bin("vagus"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _owned = Owned(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
    let ev: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"));
    let port = ev["addr"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let review =
        std::fs::read_to_string(repo().join("brain/kube/tests/fixtures/admission-gpu-pod.json"))
            .unwrap();
    let (s, r) = post(
        &format!(
            "https://localhost:{port}{}",
            w["clientConfig"]["service"]["path"].as_str().unwrap()
        ),
        &review,
        Some(&certs.join("ca.pem")),
    );
    assert_eq!(s, 200, "{r}");
    let answer: Value = serde_json::from_str(&r).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{r}");
    assert!(answer["response"]["patch"].is_string(), "{r}");
}

/// Every `.rs` file under these directories of the repository, joined.
fn sources(dirs: &[&str]) -> String {
    fn walk(p: &Path, out: &mut String) {
        for e in std::fs::read_dir(p).unwrap().map(|e| e.unwrap().path()) {
            if e.is_dir() {
                walk(&e, out);
            } else if e.extension().is_some_and(|x| x == "rs") {
                *out += &std::fs::read_to_string(&e).unwrap();
            }
        }
    }
    let mut out = String::new();
    for d in dirs {
        walk(&repo().join(d), &mut out);
    }
    out
}

/// The names in `s` that look like `start…` metric or label names.
fn words_from(s: &str, starts: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if boundary && starts.iter().any(|p| s[i..].starts_with(p)) {
            let end = s[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(s.len(), |e| i + e);
            out.insert(s[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn grafana_dashboards_query_only_what_vagus_exports() {
    let exported = sources(&["agent/src", "brain/service/src", "gateway/src"]);
    let dir = repo().join("containers/grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["fleet", "loop", "node", "workloads"]);
    let mut uids = BTreeSet::new();
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for f in &files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let what = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            d["schemaVersion"].as_u64().unwrap() >= 39,
            "{what}: Grafana 11's schema"
        );
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{what}: uid taken"
        );
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(vars[0], "datasource", "{what}");
        let panels = d["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{what}");
        for p in panels {
            let title = p["title"].as_str().unwrap();
            assert_eq!(p["type"], "timeseries", "{what}: {title}");
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{what}: {title}");
            for k in ["h", "w", "x", "y"] {
                assert!(p["gridPos"][k].is_u64(), "{what}: {title}: gridPos.{k}");
            }
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{what}: {title}");
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                for m in words_from(expr, &["vagus_", "DCGM_"]) {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| m.strip_suffix(s))
                        .filter(|b| exported.contains(&format!("\"{b}\"")))
                        .unwrap_or(&m);
                    let forms = [
                        format!("\"{base}\""),
                        format!("{base}{{"),
                        format!("# TYPE {base} "),
                    ];
                    assert!(
                        forms.iter().any(|f| exported.contains(f)),
                        "{what}: {title}: no Vagus program exports {m}"
                    );
                }
                // Labels grouped by and shown: ones the metrics carry.
                let mut labels = BTreeSet::new();
                for part in expr.split("by (").skip(1) {
                    let inner = part.split(')').next().unwrap();
                    labels.extend(inner.split(',').map(|l| l.trim().to_string()));
                }
                let legend = t["legendFormat"].as_str().unwrap_or_default();
                for part in legend.split("{{").skip(1) {
                    labels.insert(part.split("}}").next().unwrap().trim().to_string());
                }
                for v in &vars[1..] {
                    if expr.contains(&format!("{v}=~\"${v}\"")) {
                        labels.insert(v.to_string());
                    }
                }
                labels.remove("le");
                for l in &labels {
                    assert!(
                        exported.contains(&format!("\"{l}\""))
                            || exported.contains(&format!("{l}=\\\"")),
                        "{what}: {title}: no Vagus metric has a label {l}"
                    );
                }
                // promtool parses it (Grafana's variables made concrete).
                let concrete = expr
                    .replace("$__rate_interval", "1m")
                    .replace("\"$", "\"")
                    .replace("=~\"Hostname\"", "=~\".*\"")
                    .replace("=~\"model\"", "=~\".*\"")
                    .replace("=~\"workload\"", "=~\".*\"");
                let n = rules.matches("record:").count();
                rules += &format!(
                    "      - record: dashboard:expr_{n}\n        expr: {}\n",
                    serde_json::to_string(&concrete).unwrap()
                );
            }
        }
    }
    let sim = Sim::new("grafana-rules");
    let file = sim.dir.join("rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    let required = std::env::var("VAGUS_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
    match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
    {
        Ok(o) => assert!(
            o.status.success(),
            "promtool check rules:\n{}\n{rules}",
            text(&o)
        ),
        Err(e) if !required => eprintln!("skipping the promtool check: {e}"),
        Err(e) => panic!("VAGUS_REQUIRE_PROMTOOL=1 but promtool does not run: {e}"),
    }
}

#[test]
fn a_brain_told_kubernetes_without_one_says_so_and_exits() {
    let sim = Sim::new("k8s-unreachable");
    let kubeconfig = sim.dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: https://127.0.0.1:9\n  name: c\n\
         contexts:\n- context:\n    cluster: c\n    user: u\n  name: x\ncurrent-context: x\n\
         users:\n- name: u\n  user:\n    token: t\n",
    )
    .unwrap();
    let tokens = admin_tokens(&sim, "k8s-unreachable-token-01");
    let out = Command::new(bin("vagus"))
        .args(["brain", "--http", "127.0.0.1:0", "--tokens", &tokens])
        .args(["--scheduler", "127.0.0.1:0", "--kubernetes"])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "vagus")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lease vagus/vagus-brain"), "{err}");
    // --kubernetes needs the extender it binds for.
    let out = Command::new(bin("vagus"))
        .args([
            "brain",
            "--http",
            "127.0.0.1:0",
            "--tokens",
            &tokens,
            "--kubernetes",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--scheduler"),
        "--kubernetes requires --scheduler"
    );
}
