//! The deployment files in deploy/ checked for what operators rely on: the Kubernetes
//! manifests and the compose file parse as YAML and carry the probes, volumes, grace
//! periods and security settings; the configuration they embed is one the broker
//! accepts; the Dockerfile and the systemd unit have their required instructions; and
//! `squall healthcheck`, which the image's HEALTHCHECK runs, tells a live broker from
//! a missing one. (CI also validates the manifests against the Kubernetes schemas with
//! `kubernetes-validate`, and the unit with `systemd-analyze verify`: see .ci/run.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("read deploy/{path}: {e}"))
}

/// The YAML file, with `<<` merge keys applied as Docker Compose does.
fn yaml(path: &str) -> Value {
    let mut v: Value =
        serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"));
    v.apply_merge()
        .unwrap_or_else(|e| panic!("deploy/{path}: {e}"));
    v
}

/// `v[a][b]...` for the path `a.b...`; a key may itself contain dots
/// (`prometheus.io/port`, `squall.toml`). Fails with the path when it is missing.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let steps: Vec<&str> = path.split('.').collect();
    walk(v, &steps).unwrap_or_else(|| panic!("no `{path}` in {v:?}"))
}

fn walk<'a>(v: &'a Value, steps: &[&str]) -> Option<&'a Value> {
    if steps.is_empty() {
        return Some(v);
    }
    (1..=steps.len()).rev().find_map(|n| {
        let key = steps[..n].join(".");
        let next = match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(key.as_str()),
        }?;
        walk(next, &steps[n..])
    })
}

fn int(v: &Value, path: &str) -> u64 {
    at(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("`{path}` is not a number"))
}

fn text<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` is not a string"))
}

/// Parses a duration like "20s" as the broker does.
fn secs(s: &str) -> u64 {
    s.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`{s}` is not a whole number of seconds"))
}

/// The squall.toml in the ConfigMap, loaded as `squall serve --config` would.
fn configmap_settings() -> squall::config::Settings {
    let cm = yaml("k8s/configmap.yaml");
    let toml = text(&cm, "data.squall.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("squall.toml");
    std::fs::write(&file, toml).unwrap();
    squall::config::Settings::load(Some(&file), Vec::new(), Vec::<(&str, String)>::new())
        .unwrap_or_else(|e| panic!("the ConfigMap's squall.toml is refused: {e}"))
}

#[test]
fn statefulset_has_probes_volumes_grace_and_a_non_root_pod() {
    let sts = yaml("k8s/statefulset.yaml");
    assert_eq!(text(&sts, "kind"), "StatefulSet");
    assert_eq!(int(&sts, "spec.replicas"), 3);
    assert_eq!(text(&sts, "spec.serviceName"), "squall");
    let pod = at(&sts, "spec.template");
    let c = at(pod, "spec.containers.0");
    assert_eq!(text(c, "readinessProbe.httpGet.path"), "/readyz");
    assert_eq!(text(c, "livenessProbe.httpGet.path"), "/healthz");
    assert_eq!(text(c, "readinessProbe.httpGet.port"), "http");
    assert!(at(c, "resources.requests.memory").is_string());
    assert!(at(c, "resources.limits.memory").is_string());
    assert_eq!(
        at(c, "securityContext.allowPrivilegeEscalation").as_bool(),
        Some(false)
    );

    let sec = at(pod, "spec.securityContext");
    assert_eq!(at(sec, "runAsNonRoot").as_bool(), Some(true));
    assert!(int(sec, "runAsUser") > 0);

    // One claim per pod, mounted where the broker keeps its data.
    let claim = at(&sts, "spec.volumeClaimTemplates.0");
    let claim_name = text(claim, "metadata.name");
    assert_eq!(text(claim, "spec.accessModes.0"), "ReadWriteOnce");
    let mounts = at(c, "volumeMounts").as_sequence().unwrap();
    let data = mounts
        .iter()
        .find(|m| text(m, "name") == claim_name)
        .expect("the claim is mounted");
    let settings = configmap_settings();
    assert_eq!(Path::new(text(data, "mountPath")), settings.server.data_dir);

    // Kubernetes' SIGKILL comes after the broker's own drain.
    let grace = int(pod, "spec.terminationGracePeriodSeconds");
    assert!(
        grace > settings.server.shutdown_grace.as_secs(),
        "terminationGracePeriodSeconds {grace} must exceed shutdown_grace {:?}",
        settings.server.shutdown_grace
    );

    // Prometheus finds /metrics on the HTTP port the broker listens on.
    let ann = at(pod, "metadata.annotations");
    assert_eq!(text(ann, "prometheus.io/scrape"), "true");
    assert_eq!(text(ann, "prometheus.io/path"), "/metrics");
    let http = settings.server.http.expect("http enabled");
    assert_eq!(text(ann, "prometheus.io/port"), http.port().to_string());
    assert_eq!(settings.server.listen.port(), 7600);
    assert!(
        settings.server.listen.ip().is_unspecified(),
        "reachable from other pods"
    );
}

#[test]
fn service_is_headless_and_budget_keeps_two_nodes() {
    let svc = yaml("k8s/service.yaml");
    assert_eq!(text(&svc, "kind"), "Service");
    assert_eq!(text(&svc, "spec.clusterIP"), "None");
    let ports: Vec<u64> = at(&svc, "spec.ports")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| int(p, "port"))
        .collect();
    assert_eq!(ports, [7600, 7601, 7700]);
    let pdb = yaml("k8s/pdb.yaml");
    assert_eq!(text(&pdb, "kind"), "PodDisruptionBudget");
    assert_eq!(int(&pdb, "spec.maxUnavailable"), 1);
    let sts = yaml("k8s/statefulset.yaml");
    for selector in [
        at(&svc, "spec.selector"),
        at(&pdb, "spec.selector.matchLabels"),
    ] {
        assert_eq!(selector, at(&sts, "spec.template.metadata.labels"));
    }
    let kustomization = read("k8s/kustomization.yaml");
    for file in [
        "configmap.yaml",
        "service.yaml",
        "pdb.yaml",
        "statefulset.yaml",
    ] {
        assert!(kustomization.contains(file), "kustomization lists {file}");
    }
}

#[test]
fn compose_runs_three_nodes_with_their_own_volumes_and_ports() {
    let compose = yaml("docker-compose.yml");
    let services = at(&compose, "services").as_mapping().unwrap();
    assert_eq!(services.len(), 3);
    let mut volumes = Vec::new();
    let mut ports = Vec::new();
    let mut node_ids = Vec::new();
    for (_, s) in services {
        volumes.push(text(s, "volumes.0").split(':').next().unwrap().to_owned());
        for p in at(s, "ports").as_sequence().unwrap() {
            ports.push(p.as_str().unwrap().rsplit_once(':').unwrap().0.to_owned());
        }
        node_ids.push(text(s, "environment.SQUALL_NODE_ID").to_owned());
        assert!(text(s, "volumes.0").ends_with(":/var/lib/squall"));
        assert!(secs(text(s, "stop_grace_period")) > dockerfile_grace());
    }
    for list in [&mut volumes, &mut ports, &mut node_ids] {
        let n = list.len();
        list.sort();
        list.dedup();
        assert_eq!(list.len(), n, "distinct: {list:?}");
    }
    assert_eq!(at(&compose, "volumes").as_mapping().unwrap().len(), 3);

    // One cluster: each service, loaded with its environment, is the member whose
    // peers entry names its service, and hands clients the port published on the host.
    let mut ids = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let env: Vec<(String, String)> = at(service, "environment")
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_owned(),
                    v.as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let s = squall::config::Settings::load(None, env, Vec::<(&str, String)>::new())
            .unwrap_or_else(|e| panic!("{name}'s environment is refused: {e}"));
        let id = s.cluster.node_id(&s.server).expect("a cluster member");
        let peer = s.cluster.peers.iter().find(|p| p.id == id).unwrap();
        assert_eq!(peer.addr, format!("{name}:7700"), "{name}");
        assert_eq!(s.cluster.listen.unwrap().port(), 7700);
        let published = text(service, "ports.0");
        let (host, inner) = published.rsplit_once(':').unwrap();
        assert_eq!(inner, "7600", "{published}");
        assert_eq!(
            s.cluster.client_addr(&s.server),
            host,
            "{name} advertises {host}"
        );
        ids.push(id);
    }
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
}

/// The environment a StatefulSet pod gets, `$(VAR)` references expanded as the kubelet
/// does, for the pod `pod`.
fn pod_env(sts: &Value, pod: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in at(sts, "spec.template.spec.containers.0.env")
        .as_sequence()
        .unwrap()
    {
        let name = text(e, "name").to_owned();
        let value = match e.get("value") {
            Some(v) => {
                let mut v = v.as_str().unwrap().to_owned();
                for (k, known) in &env {
                    v = v.replace(&format!("$({k})"), known);
                }
                v
            }
            None => {
                assert_eq!(text(e, "valueFrom.fieldRef.fieldPath"), "metadata.name");
                pod.to_owned()
            }
        };
        env.push((name, value));
    }
    env
}

#[test]
fn kubernetes_pods_are_the_members_of_one_cluster() {
    let sts = yaml("k8s/statefulset.yaml");
    let svc = yaml("k8s/service.yaml");
    let service = text(&sts, "spec.serviceName");
    let replicas = int(&sts, "spec.replicas");
    let cluster_port = at(&svc, "spec.ports")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| text(p, "name") == "cluster")
        .map(|p| int(p, "port"))
        .expect("the Service has the cluster port");
    let container_ports = at(&sts, "spec.template.spec.containers.0.ports");
    assert!(container_ports
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| text(p, "name") == "cluster" && int(p, "containerPort") == cluster_port));
    let cm = yaml("k8s/configmap.yaml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("squall.toml");
    std::fs::write(&file, text(&cm, "data.squall.toml")).unwrap();
    let mut ids = Vec::new();
    for n in 0..replicas {
        let pod = format!("squall-{n}");
        let s = squall::config::Settings::load(
            Some(&file),
            pod_env(&sts, &pod),
            Vec::<(&str, String)>::new(),
        )
        .unwrap_or_else(|e| panic!("pod {pod}: {e}"));
        assert_eq!(s.cluster.peers.len() as u64, replicas, "peers = replicas");
        assert_eq!(s.cluster.listen.unwrap().port() as u64, cluster_port);
        let id = s.cluster.node_id(&s.server).expect("a member");
        let me = s.cluster.peers.iter().find(|p| p.id == id).unwrap();
        assert_eq!(me.addr, format!("{pod}.{service}:{cluster_port}"));
        assert_eq!(
            s.cluster.client_addr(&s.server),
            format!("{pod}.{service}:7600"),
            "{pod} hands clients its stable name"
        );
        ids.push(id);
    }
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "distinct ids");
}

/// The ConfigMap's squall.toml run as three members named by host, like the pods: one
/// loopback address per member (127.0.0.1-3) standing for squall-0..2.squall, the same
/// ports on each. They form the cluster by themselves and every one turns ready.
#[tokio::test]
async fn three_members_named_by_host_form_the_cluster_the_configmap_describes() {
    let cm = yaml("k8s/configmap.yaml");
    let config_dir = tempfile::tempdir().unwrap();
    let file = config_dir.path().join("squall.toml");
    std::fs::write(&file, text(&cm, "data.squall.toml")).unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (client_port, cluster_port) = (free(), free());
    let hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let peers: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| format!("{}@{h}:{cluster_port}", i + 1))
        .collect();
    let peers = peers.join(",");
    let dirs: Vec<tempfile::TempDir> = hosts.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut members = Vec::new();
    for (host, dir) in hosts.iter().zip(&dirs) {
        let listen: std::net::SocketAddr = format!("{host}:{client_port}").parse().unwrap();
        let cluster_listen = format!("{host}:{cluster_port}");
        let args = [
            "--config",
            file.to_str().unwrap(),
            "--cluster-listen",
            &cluster_listen,
            "--peers",
            &peers,
        ];
        let data = dir.path().to_str().unwrap();
        let mut all = vec!["--listen", &listen.to_string(), "--data-dir", data]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (child, events) = common::spawn_squall(&all, &[("SQUALL_NODE_ID", host)]);
        let mut http = None;
        while http.is_none() {
            match events.recv_timeout(std::time::Duration::from_secs(30)) {
                Ok(common::LogEvent::Http(a)) => http = Some(a),
                Ok(_) => {}
                Err(e) => panic!("member {host} did not start: {e:?}"),
            }
        }
        members.push((child, http.unwrap()));
    }
    for (_, http) in &members {
        let http = *http;
        let mut ready = false;
        for _ in 0..150 {
            if common::http_get(http, "/readyz").await.0 == 200 {
                ready = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert!(ready, "member at {http} never became ready (no leader)");
    }
    for (mut child, _) in members {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// SQUALL_SHUTDOWN_GRACE set by the image, in seconds.
fn dockerfile_grace() -> u64 {
    let file = read("Dockerfile");
    let v = file
        .split_whitespace()
        .find_map(|w| w.strip_prefix("SQUALL_SHUTDOWN_GRACE="))
        .expect("the image sets SQUALL_SHUTDOWN_GRACE");
    secs(v)
}

#[test]
fn dockerfile_builds_small_runs_unprivileged_and_stops_within_dockers_timeout() {
    let file = read("Dockerfile");
    let instr: Vec<&str> = file
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let has = |prefix: &str| instr.iter().any(|l| l.starts_with(prefix));
    assert_eq!(
        instr.iter().filter(|l| l.starts_with("FROM ")).count(),
        2,
        "two stages"
    );
    assert!(has("FROM rust:"));
    assert!(has("COPY --from=build"));
    assert!(has("USER 65532"), "non-root user");
    assert!(has("VOLUME [\"/var/lib/squall\"]"));
    assert!(has("EXPOSE 7600 7601"));
    assert!(has("STOPSIGNAL SIGTERM"));
    assert!(file.contains("SQUALL_LISTEN=0.0.0.0:7600"));
    assert!(file.contains("SQUALL_HTTP=0.0.0.0:7601"));
    assert!(file.contains("SQUALL_DATA_DIR=/var/lib/squall"));
    assert!(has("HEALTHCHECK "));
    assert!(file.contains("\"healthcheck\", \"--http\", \"127.0.0.1:7601\""));
    // Docker kills 10 s after SIGTERM by default.
    assert!(dockerfile_grace() < 10);
    // The build context is the repository root: keep build output out of it.
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .expect(".dockerignore at the repository root");
    assert!(ignore.lines().any(|l| l.trim() == "target"));
}

#[test]
fn systemd_unit_is_hardened_and_outlasts_the_drain() {
    let unit = read("systemd/squall.service");
    let value = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect()
    };
    let one = |key: &str| -> &str {
        match value(key).as_slice() {
            [v] => v,
            other => panic!("{key}= set {} times", other.len()),
        }
    };
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "squall"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(one(key), want, "{key}");
    }
    assert!(one("RestrictAddressFamilies").contains("AF_INET"));
    let exec = one("ExecStart");
    assert!(exec.contains("serve --config /etc/squall/squall.toml"));
    assert!(exec.contains("--data-dir /var/lib/squall"));
    let grace = secs(
        one("Environment")
            .strip_prefix("SQUALL_SHUTDOWN_GRACE=")
            .unwrap(),
    );
    assert!(secs(one("TimeoutStopSec")) > grace);
}

fn healthcheck(http: &str, path: &str) -> std::process::ExitStatus {
    Command::new(env!("CARGO_BIN_EXE_squall"))
        .args([
            "healthcheck",
            "--http",
            http,
            "--path",
            path,
            "--timeout",
            "2s",
        ])
        .env_remove("SQUALL_HTTP")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run squall healthcheck")
}

#[tokio::test]
async fn healthcheck_passes_on_a_live_broker_and_fails_without_one() {
    let broker = common::TestBroker::start().await;
    let http = broker.http_addr().to_string();
    let status = tokio::task::spawn_blocking(move || {
        (
            healthcheck(&http, "/healthz"),
            healthcheck(&http, "/readyz"),
            healthcheck(&http, "/nope"),
        )
    })
    .await
    .unwrap();
    assert!(status.0.success(), "/healthz: {:?}", status.0);
    assert!(status.1.success(), "/readyz: {:?}", status.1);
    assert_eq!(status.2.code(), Some(1), "404 is unhealthy");
    // Nothing listens on a port just released.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = tokio::task::spawn_blocking(move || healthcheck(&free.to_string(), "/healthz"))
        .await
        .unwrap();
    assert!(!down.success());
}

/// `KEY=value` settings of a unit file, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_template_runs_distinct_nodes_off_loopback() {
    let single = read("systemd/squall.service");
    let template = read("systemd/squall@.service");
    // As hardened as the single-node unit, line for line, apart from what names the node.
    for line in single
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let key = line.split('=').next().unwrap();
        if [
            "Description",
            "ExecStart",
            "EnvironmentFile",
            "Environment",
            "StateDirectory",
        ]
        .contains(&key)
        {
            continue;
        }
        assert!(
            template.lines().any(|l| l == line),
            "squall@.service lacks {line}"
        );
    }
    assert_eq!(unit_values(&template, "StateDirectory"), ["squall/%i"]);
    let exec = unit_values(&template, "ExecStart");
    assert!(
        exec[0].ends_with("--data-dir /var/lib/squall/%i"),
        "{exec:?}"
    );
    // The node's own listen addresses are required (no leading `-`).
    assert_eq!(
        unit_values(&template, "EnvironmentFile"),
        ["/etc/squall/%i.env"]
    );
    let env = unit_values(&template, "Environment");
    assert!(env.contains(&"SQUALL_NODE_ID=%i"), "{env:?}");

    // Two instances with the example's addresses: distinct ids and directories, and a
    // listen address other machines can reach, accepted by the broker's loader.
    let example: Vec<(String, String)> = read("systemd/node.env.example")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let mut seen = Vec::new();
    for node in ["node-a", "node-b"] {
        let mut vars = example.clone();
        vars.push(("SQUALL_NODE_ID".to_owned(), node.to_owned()));
        let s = squall::config::Settings::load(
            Some(&deploy("squall.toml")),
            vars,
            [("data_dir", format!("/var/lib/squall/{node}"))],
        )
        .unwrap_or_else(|e| panic!("{node}: {e}"));
        assert!(!s.server.listen.ip().is_loopback(), "{}", s.server.listen);
        seen.push((s.server.node_id.clone(), s.server.data_dir.clone()));
    }
    assert_ne!(seen[0].0, seen[1].0);
    assert_ne!(seen[0].1, seen[1].1);
}

/// Every `squall_*` series the rules read, from their expressions.
fn squall_series(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("squall_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

#[tokio::test]
async fn prometheus_rules_cover_the_documented_alerts_with_real_series() {
    let rules = yaml("prometheus/squall-rules.yml");
    let mut alerts = Vec::new();
    let mut series = Vec::new();
    for group in at(&rules, "groups").as_sequence().expect("groups") {
        for rule in at(group, "rules").as_sequence().expect("rules") {
            alerts.push(text(rule, "alert").to_owned());
            series.extend(squall_series(text(rule, "expr")));
            assert!(!text(rule, "annotations.summary").is_empty());
        }
    }
    // One rule per row of docs/operations.md, "What to alert on".
    let ops =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    let table = ops.split("## What to alert on").nth(1).unwrap();
    let rows = table
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| ") && !l.starts_with("| alert") && !l.starts_with("| ---"))
        .count();
    assert_eq!(alerts.len(), rows, "{alerts:?}");

    // Every series read is one a broker exposes (with a queue, so per-queue ones exist).
    let broker = common::TestBroker::start().await;
    let client = squall_client::Client::connect(broker.addr).await.unwrap();
    client.publish("jobs", "x").await.unwrap();
    let (status, body) = common::http_get(broker.http_addr(), "/metrics").await;
    assert_eq!(status, 200);
    for name in series {
        let exposed = body
            .lines()
            .any(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name.as_str()));
        assert!(
            exposed,
            "the rules read {name}, which /metrics does not have"
        );
    }
}

#[test]
fn compose_secure_override_gives_every_node_its_tokens_and_certificate() {
    let base = yaml("docker-compose.yml");
    let secure = yaml("docker-compose.secure.yml");
    let nodes = at(&base, "services").as_mapping().expect("services");
    for (name, _) in nodes {
        let name = name.as_str().unwrap();
        let service = at(&secure, &format!("services.{name}"));
        let command: Vec<&str> = at(service, "command")
            .as_sequence()
            .expect("command")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            command,
            ["serve", "--config", "/run/secrets/squall_config"],
            "{name}"
        );
        let secrets: Vec<&str> = at(service, "secrets")
            .as_sequence()
            .expect("secrets")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for (var, secret) in [
            ("SQUALL_TLS_CERT", "squall_tls_cert"),
            ("SQUALL_TLS_KEY", "squall_tls_key"),
            ("SQUALL_CLUSTER_TLS_CA", "squall_tls_ca"),
        ] {
            assert_eq!(
                text(service, &format!("environment.{var}")),
                format!("/run/secrets/{secret}")
            );
            assert!(secrets.contains(&secret), "{name} mounts {secret}");
        }
        assert!(secrets.contains(&"squall_config"), "{name}");
    }
    for secret in [
        "squall_config",
        "squall_tls_cert",
        "squall_tls_key",
        "squall_tls_ca",
    ] {
        let file = text(&secure, &format!("secrets.{secret}.file"));
        assert!(file.starts_with("./secrets/"), "{secret}: {file}");
    }
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".gitignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l == "/deploy/secrets"),
        "secrets stay out of git"
    );
}

#[test]
fn kubernetes_secure_overlay_mounts_the_secrets_the_broker_reads() {
    let kustomization = yaml("k8s/secure/kustomization.yaml");
    assert_eq!(at(&kustomization, "resources")[0].as_str(), Some("../"));
    let patch = yaml("k8s/secure/statefulset-secure.yaml");
    let container = &at(&patch, "spec.template.spec.containers")[0];
    assert_eq!(text(container, "name"), "squall");
    let mount = &at(container, "volumeMounts")[0];
    assert_eq!(text(mount, "name"), "tls");
    let dir = text(mount, "mountPath");
    let env: Vec<(&str, &str)> = at(container, "env")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (text(e, "name"), text(e, "value")))
        .collect();
    assert_eq!(
        env,
        [
            ("SQUALL_TLS_CERT", format!("{dir}/tls.crt").as_str()),
            ("SQUALL_TLS_KEY", format!("{dir}/tls.key").as_str()),
            ("SQUALL_CLUSTER_TLS_CA", format!("{dir}/ca.crt").as_str())
        ]
    );
    let volumes = at(&patch, "spec.template.spec.volumes")
        .as_sequence()
        .unwrap();
    let secret_of = |name: &str| {
        let v = volumes
            .iter()
            .find(|v| text(v, "name") == name)
            .expect(name);
        text(v, "secret.secretName").to_owned()
    };
    assert_eq!(secret_of("config"), "squall-config");
    assert_eq!(secret_of("tls"), "squall-tls");

    // The example Secrets: the right types and keys, and a squall.toml the broker loads
    // with a token in it.
    let docs: Vec<Value> =
        serde_norway::Deserializer::from_str(&read("k8s/secure/secrets.example.yaml"))
            .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
            .collect();
    let secret = |name: &str| {
        docs.iter()
            .find(|d| text(d, "metadata.name") == name)
            .expect(name)
    };
    let tls = secret("squall-tls");
    assert_eq!(text(tls, "type"), "kubernetes.io/tls");
    assert!(text(tls, "stringData.tls.crt").contains("BEGIN CERTIFICATE"));
    assert!(text(tls, "stringData.tls.key").contains("PRIVATE KEY"));
    assert!(text(tls, "stringData.ca.crt").contains("BEGIN CERTIFICATE"));
    let toml = text(secret("squall-config"), "stringData.squall.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("squall.toml");
    std::fs::write(&file, toml).unwrap();
    let s = squall::config::Settings::load(Some(&file), Vec::new(), Vec::<(&str, String)>::new())
        .unwrap_or_else(|e| panic!("the example Secret's squall.toml is refused: {e}"));
    assert_eq!(s.server.auth.tokens.len(), 1);
    // The members of the secure cluster authenticate each other with a token.
    assert!(!s.cluster.token.is_empty());
    assert_eq!(
        s.cluster.peers,
        configmap_settings().cluster.peers,
        "the same members as the ConfigMap's"
    );
}
