//! What each command does: one call (or a few) to the controller, and a table or the JSON.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::connect::Api;
use crate::table::{cell, print};
use crate::{
    Cli, Command, EipCommand, EventCommand, GroupCommand, ImageCommand, MaintenanceStep,
    NetCommand, NodeCommand, SgCommand, TokenCommand, VmCommand, VolumeCommand,
};

/// How long `--wait` waits.
const WAIT: Duration = Duration::from_secs(300);

pub fn run(cli: Cli) -> Result<()> {
    if let Command::Node(NodeCommand::Diag { config }) = &cli.command {
        return diag(config, cli.json);
    }
    let api = Api::new(crate::connect::Flags {
        url: cli.url.clone(),
        token: cli.token.clone(),
        ca_file: cli.ca.clone(),
        insecure_http: cli.insecure_http,
    })?;
    let out = Out { json: cli.json };
    match cli.command {
        Command::Vm(c) => vm(&api, &out, c),
        Command::Node(c) => node(&api, &out, c),
        Command::Net(c) => net(&api, &out, c),
        Command::Sg(c) => sg(&api, &out, c),
        Command::Eip(c) => eip(&api, &out, c),
        Command::Image(c) => image(&api, &out, c),
        Command::Volume(c) => volume(&api, &out, c),
        Command::Group(c) => group(&api, &out, c),
        Command::Event(EventCommand::List {
            after,
            resource,
            follow,
        }) => events(&api, &out, after, resource, follow),
        Command::Pools => {
            let pools: Value = api.get("/v1/pools")?;
            out.list(
                &pools,
                &["NAME", "KIND", "SHARED", "NODES"],
                &["name", "kind", "shared", "nodes"],
            )
        }
        Command::Offerings => {
            let o: Value = api.get("/v1/offerings")?;
            out.list(
                &o,
                &["NAME", "VCPUS", "MEMORY_MIB"],
                &["name", "vcpus", "memory_mib"],
            )
        }
        Command::Settings { set } => settings(&api, &out, set),
        Command::Token(c) => token(&api, &out, c),
        Command::Audit { after } => {
            let a: Value = api.get(&format!("/v1/audit?after={after}"))?;
            out.list(
                &a,
                &["SEQ", "WHEN", "TOKEN", "METHOD", "PATH", "STATUS"],
                &["seq", "unix_ms", "token", "method", "path", "status"],
            )
        }
    }
}

/// Tables or JSON.
struct Out {
    json: bool,
}

impl Out {
    fn list(&self, items: &Value, header: &[&str], fields: &[&str]) -> Result<()> {
        if self.json {
            return self.raw(items);
        }
        let rows: Vec<Vec<String>> = items
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|item| fields.iter().map(|f| cell(&item[f])).collect())
                    .collect()
            })
            .unwrap_or_default();
        print(header, &rows);
        Ok(())
    }

    /// One resource: its fields, one a line.
    fn one(&self, item: &Value) -> Result<()> {
        if self.json {
            return self.raw(item);
        }
        if let Some(map) = item.as_object() {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            for (k, v) in map {
                let text = match v {
                    Value::Object(_) | Value::Array(_)
                        if !v
                            .as_array()
                            .is_some_and(|a| a.iter().all(|x| !x.is_object())) =>
                    {
                        serde_json::to_string(v)?
                    }
                    _ => cell(v),
                };
                println!("{k:<width$}  {text}");
            }
        }
        Ok(())
    }

    fn raw(&self, v: &Value) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }

    fn done(&self, what: &str, answer: &Value) -> Result<()> {
        if self.json {
            self.raw(answer)
        } else {
            println!("{what}");
            Ok(())
        }
    }
}

fn seg(s: &str) -> String {
    triad_api::client::segment(s)
}

/// Polls operation `id` until it ends, printing a dot a second; its final record.
fn wait_operation(api: &Api, id: &str) -> Result<Value> {
    let start = Instant::now();
    loop {
        let op: Value = api.get(&format!("/v1/operations/{}", seg(id)))?;
        match op["state"].as_str() {
            Some("succeeded") => return Ok(op),
            Some("failed") => bail!(
                "{} failed: {}",
                op["kind"].as_str().unwrap_or("the operation"),
                cell(&op["message"])
            ),
            _ if start.elapsed() > WAIT => bail!("{id} still runs after {WAIT:?}"),
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn accepted(api: &Api, out: &Out, answer: Value, wait: bool, what: &str) -> Result<()> {
    let op = answer["operation"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if wait {
        wait_operation(api, &op)?;
    }
    if out.json {
        return out.raw(&answer);
    }
    let id = cell(&answer["resource"]["id"]);
    let name = cell(&answer["resource"]["name"]);
    if !wait {
        println!("{what} {name} ({id}): accepted ({op}; `triad vm show {id}` follows it)");
        return Ok(());
    }
    match api.get::<Value>(&format!("/v1/vms/{}", seg(&id))) {
        Ok(vm) => println!(
            "{what} {name} ({id}): {}{}",
            cell(&vm["state"]),
            vm["node"]
                .as_str()
                .map(|n| format!(" on {n}"))
                .unwrap_or_default()
        ),
        Err(_) => println!("{what} {name} ({id}): done"),
    }
    Ok(())
}

fn vm(api: &Api, out: &Out, c: VmCommand) -> Result<()> {
    match c {
        VmCommand::Create(create) => {
            let crate::VmCreate {
                name,
                image,
                offering,
                vcpus,
                memory_mib,
                nets,
                sgs,
                volumes,
                groups,
                ha,
                cmdline,
                user_data,
                ssh_keys,
                no_start,
                wait,
            } = *create;
            let nics: Vec<Value> = nets
                .iter()
                .map(|n| match n.split_once('=') {
                    Some((net, ip)) => json!({"network": net, "ip": ip, "security_groups": sgs}),
                    None => json!({"network": n, "security_groups": sgs}),
                })
                .collect();
            let user_data = user_data
                .map(|p| {
                    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
                })
                .transpose()?;
            let mut body = json!({"name": name, "image": image, "nics": nics, "volumes": volumes,
                "affinity_groups": groups, "ha": ha, "ssh_keys": ssh_keys, "start": !no_start});
            for (key, value) in [
                ("offering", offering.map(Value::from)),
                ("vcpus", vcpus.map(Value::from)),
                ("memory_mib", memory_mib.map(Value::from)),
                ("cmdline", cmdline.map(Value::from)),
                ("user_data", user_data.map(Value::from)),
            ] {
                if let Some(v) = value {
                    body[key] = v;
                }
            }
            let answer = api.post("/v1/vms", &body)?;
            accepted(api, out, answer, wait.wait, "vm")
        }
        VmCommand::List { node, state } => {
            let mut q = Vec::new();
            if let Some(n) = node {
                q.push(format!("node={}", seg(&n)));
            }
            if let Some(s) = state {
                q.push(format!("state={}", seg(&s)));
            }
            let vms: Value = api.get(&format!("/v1/vms?{}", q.join("&")))?;
            if out.json {
                return out.raw(&vms);
            }
            let rows: Vec<Vec<String>> = vms
                .as_array()
                .into_iter()
                .flatten()
                .map(|vm| {
                    let ips: Vec<String> = vm["nics"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|n| cell(&n["ip"]))
                        .collect();
                    vec![
                        cell(&vm["id"]),
                        cell(&vm["name"]),
                        cell(&vm["state"]),
                        cell(&vm["node"]),
                        ips.join(","),
                        format!("{}C/{}M", vm["vcpus"], vm["memory_mib"]),
                        cell(&vm["ha"]),
                        cell(&vm["reason"]),
                    ]
                })
                .collect();
            print(
                &["ID", "NAME", "STATE", "NODE", "IP", "SIZE", "HA", "REASON"],
                &rows,
            );
            Ok(())
        }
        VmCommand::Show { vm } => out.one(&api.get(&format!("/v1/vms/{}", seg(&vm)))?),
        VmCommand::Start { vm, wait } => {
            let answer = api.post(&format!("/v1/vms/{}/start", seg(&vm)), &json!({}))?;
            accepted(api, out, answer, wait.wait, "start of vm")
        }
        VmCommand::Stop {
            vm,
            force,
            no_restart,
            wait,
        } => {
            let answer = api.post(
                &format!("/v1/vms/{}/stop", seg(&vm)),
                &json!({"force": force, "no_restart": no_restart}),
            )?;
            accepted(api, out, answer, wait.wait, "stop of vm")
        }
        VmCommand::Reboot { vm } => {
            let answer = api.post(&format!("/v1/vms/{}/reboot", seg(&vm)), &json!({}))?;
            out.done(&format!("vm {vm} rebooted"), &answer)
        }
        VmCommand::Destroy { vm, wait } => {
            let answer: Value = api.call("DELETE", &format!("/v1/vms/{}", seg(&vm)), None)?;
            accepted(api, out, answer, wait.wait, "destroy of vm")
        }
        VmCommand::Ha { vm, level } => {
            let answer: Value = api.call(
                "PUT",
                &format!("/v1/vms/{}/ha", seg(&vm)),
                Some(&json!({"ha": level})),
            )?;
            out.done(&format!("vm {vm}: HA level {level}"), &answer)
        }
        VmCommand::Why { vm } => {
            let v: Value = api.get(&format!("/v1/vms/{}", seg(&vm)))?;
            let report: Value = api.get(&format!("/v1/vms/{}/placement", seg(&vm)))?;
            if out.json {
                return out.raw(&report);
            }
            println!(
                "vm {} is {}{}",
                cell(&v["name"]),
                cell(&v["state"]),
                v["node"]
                    .as_str()
                    .map(|n| format!(" on {n}"))
                    .unwrap_or_default()
            );
            if let Some(reason) = v["reason"].as_str() {
                println!("reason: {reason}");
            }
            let rows: Vec<Vec<String>> = report["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    let verdict = if n["node"] == report["chosen"] {
                        "chosen".into()
                    } else if n["rejected_by"].is_null() {
                        "fits".into()
                    } else {
                        format!("rejected by {}", cell(&n["rejected_by"]))
                    };
                    vec![
                        cell(&n["node"]),
                        verdict,
                        n["score"]
                            .as_f64()
                            .map(|s| format!("{s:.3}"))
                            .unwrap_or("-".into()),
                        cell(&n["detail"]),
                    ]
                })
                .collect();
            print(&["NODE", "VERDICT", "SCORE", "DETAIL"], &rows);
            Ok(())
        }
        VmCommand::Console { vm, follow } => {
            let mut offset = 0;
            loop {
                let chunk: Value =
                    api.get(&format!("/v1/vms/{}/console?after={offset}", seg(&vm)))?;
                let text = chunk["text"].as_str().unwrap_or_default();
                print!("{text}");
                std::io::stdout().flush()?;
                offset = chunk["offset"].as_u64().unwrap_or(offset);
                if text.is_empty() {
                    if !follow {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
}

fn node(api: &Api, out: &Out, c: NodeCommand) -> Result<()> {
    let columns = (
        [
            "NAME",
            "ENABLE",
            "CONNECTION",
            "LIVENESS",
            "VMS",
            "CPUS",
            "MEMORY_MIB",
            "ADDRESS",
        ],
        [
            "name",
            "enable",
            "connection",
            "liveness",
            "vms",
            "cpus",
            "memory_mib",
            "address",
        ],
    );
    match c {
        NodeCommand::Join {
            name,
            address,
            node_token,
            fingerprint,
            data_address,
        } => {
            let mut body = json!({"name": name, "address": address, "token": node_token});
            if let Some(d) = data_address {
                body["data_address"] = Value::from(d);
            }
            if let Some(f) = fingerprint {
                body["fingerprint"] = Value::from(f);
            }
            let answer = api.post("/v1/nodes", &body)?;
            out.done(&format!("node {name} joined"), &answer)
        }
        NodeCommand::List => out.list(&api.get("/v1/nodes")?, &columns.0, &columns.1),
        NodeCommand::Show { node } => out.one(&api.get(&format!("/v1/nodes/{}", seg(&node)))?),
        NodeCommand::Lock { node } => act_node(api, out, &node, "lock"),
        NodeCommand::Unlock { node } => act_node(api, out, &node, "unlock"),
        NodeCommand::Enable { node } => act_node(api, out, &node, "enable"),
        NodeCommand::Disable { node } => act_node(api, out, &node, "disable"),
        NodeCommand::RenewCert { node } => {
            let answer = api.post(&format!("/v1/nodes/{}/certificate", seg(&node)), &json!({}))?;
            out.done(&format!("node {node}: a new certificate"), &answer)
        }
        NodeCommand::Maintenance { step, node } => {
            let step = match step {
                MaintenanceStep::Enter => "enter",
                MaintenanceStep::Exit => "exit",
            };
            let answer = api.post(
                &format!("/v1/nodes/{}/maintenance/{step}", seg(&node)),
                &json!({}),
            )?;
            let state = if answer["entering_maintenance"] == true {
                "entering maintenance (its VMs are moving off)".to_owned()
            } else {
                cell(&answer["enable"])
            };
            out.done(&format!("node {node}: {state}"), &answer)
        }
        NodeCommand::Remove { node } => {
            api.call::<Value>("DELETE", &format!("/v1/nodes/{}", seg(&node)), None)?;
            out.done(&format!("node {node} removed"), &Value::Null)
        }
        NodeCommand::Diag { .. } => unreachable!("handled before connecting"),
    }
}

fn act_node(api: &Api, out: &Out, node: &str, action: &str) -> Result<()> {
    let answer = api.post(&format!("/v1/nodes/{}/{action}", seg(node)), &json!({}))?;
    out.done(
        &format!("node {node}: {}", cell(&answer["enable"])),
        &answer,
    )
}

/// `triad-hostd diag`, beside this binary or on PATH: it reads the node's sockets and state
/// file, so it needs no controller.
fn diag(config: &std::path::Path, json: bool) -> Result<()> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("triad-hostd")));
    let triad_hostd = beside
        .filter(|p| p.exists())
        .unwrap_or_else(|| "triad-hostd".into());
    let shown = triad_hostd.display().to_string();
    let mut command = std::process::Command::new(triad_hostd);
    command.arg("diag").arg("--config").arg(config);
    if json {
        command.arg("--json");
    }
    let status = command.status().with_context(|| {
        format!("running {shown} (triad-hostd is installed with the node's daemons)")
    })?;
    if !status.success() {
        bail!("triad-hostd diag exited with {status}");
    }
    Ok(())
}

fn net(api: &Api, out: &Out, c: NetCommand) -> Result<()> {
    match c {
        NetCommand::Create {
            name,
            vxlan,
            underlay,
            vlan,
            novlan,
            uplink,
            cidr,
            gateway,
            dns,
            ranges,
            mtu,
        } => {
            let l2 = match (vxlan, vlan, novlan) {
                (Some(vni), None, false) => {
                    json!({"kind": "vxlan", "vni": vni, "underlay": underlay.context("--vxlan needs --underlay IF")?})
                }
                (None, Some(vid), false) => {
                    json!({"kind": "vlan", "vid": vid, "uplink": uplink.context("--vlan needs --uplink IF")?})
                }
                (None, None, true) => match uplink {
                    Some(u) => json!({"kind": "novlan", "uplink": u}),
                    None => json!({"kind": "novlan"}),
                },
                _ => bail!("give one of --vxlan VNI, --vlan VID or --novlan"),
            };
            let mut body = json!({"name": name, "l2": l2});
            if let Some(cidr) = cidr {
                let ranges: Vec<Value> = ranges
                    .iter()
                    .map(|r| {
                        r.split_once('-')
                            .map(|(a, b)| json!({"start": a, "end": b}))
                            .context("--range wants START-END")
                    })
                    .collect::<Result<_>>()?;
                let mut l3 = json!({"cidr": cidr, "dns": dns, "ranges": ranges});
                if let Some(g) = gateway {
                    l3["gateway"] = Value::from(g);
                }
                body["l3"] = l3;
            }
            if let Some(m) = mtu {
                body["mtu"] = Value::from(m);
            }
            let answer = api.post("/v1/networks", &body)?;
            out.done(
                &format!("network {name} created (the nodes make it now)"),
                &answer,
            )
        }
        NetCommand::List => {
            let nets: Value = api.get("/v1/networks")?;
            if out.json {
                return out.raw(&nets);
            }
            let rows: Vec<Vec<String>> = nets
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    let kind = format!(
                        "{} {}",
                        cell(&n["l2"]["kind"]),
                        n["l2"]
                            .get("vni")
                            .or(n["l2"].get("vid"))
                            .map(cell)
                            .unwrap_or_default()
                    );
                    let ready = n["nodes"]
                        .as_object()
                        .map(|m| {
                            format!(
                                "{}/{}",
                                m.values().filter(|v| *v == "ready").count(),
                                m.len()
                            )
                        })
                        .unwrap_or_default();
                    vec![
                        cell(&n["name"]),
                        kind.trim().to_owned(),
                        cell(&n["l3"]["cidr"]),
                        ready,
                        cell(&n["allocated"]),
                    ]
                })
                .collect();
            print(
                &["NAME", "L2", "CIDR", "NODES READY", "ADDRESSES USED"],
                &rows,
            );
            Ok(())
        }
        NetCommand::Show { network } => {
            out.one(&api.get(&format!("/v1/networks/{}", seg(&network)))?)
        }
        NetCommand::Delete { network } => {
            api.call::<Value>("DELETE", &format!("/v1/networks/{}", seg(&network)), None)?;
            out.done(&format!("network {network} is being deleted"), &Value::Null)
        }
    }
}

/// "DIRECTION PROTOCOL [PORTS] [CIDR] [ACTION]".
fn rule(text: &str) -> Result<Value> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (Some(direction), Some(protocol)) = (words.first(), words.get(1)) else {
        bail!("rule {text:?}: want DIRECTION PROTOCOL [PORTS] [CIDR] [ACTION]");
    };
    let mut rule = json!({"direction": direction, "protocol": protocol});
    for word in &words[2..] {
        if *word == "accept" || *word == "drop" {
            rule["action"] = Value::from(*word);
        } else if word.contains('/') {
            rule["remote"] = json!({"cidr": word});
        } else if let Some(group) = word.strip_prefix("group:") {
            rule["remote"] = json!({"group": group});
        } else {
            let (from, to) = word.split_once('-').unwrap_or((word, word));
            let port = |p: &str| {
                p.parse::<u16>()
                    .with_context(|| format!("rule {text:?}: {p:?} is not a port"))
            };
            rule["ports"] = json!({"from": port(from)?, "to": port(to)?});
        }
    }
    Ok(rule)
}

fn sg(api: &Api, out: &Out, c: SgCommand) -> Result<()> {
    match c {
        SgCommand::Create { name, rules } => {
            let rules: Vec<Value> = rules.iter().map(|r| rule(r)).collect::<Result<_>>()?;
            let answer = api.post(
                "/v1/security-groups",
                &json!({"name": name, "rules": rules}),
            )?;
            out.done(&format!("security group {name} created"), &answer)
        }
        SgCommand::Rules { name, rules } => {
            let rules: Vec<Value> = rules.iter().map(|r| rule(r)).collect::<Result<_>>()?;
            let answer: Value = api.call(
                "PUT",
                &format!("/v1/security-groups/{}", seg(&name)),
                Some(&json!({"name": name, "rules": rules})),
            )?;
            out.done(
                &format!("security group {name}: {} rules", rules.len()),
                &answer,
            )
        }
        SgCommand::List => out.list(
            &api.get("/v1/security-groups")?,
            &["NAME", "RULES", "MEMBERS"],
            &["name", "rules", "members"],
        ),
        SgCommand::Show { name } => {
            out.one(&api.get(&format!("/v1/security-groups/{}", seg(&name)))?)
        }
        SgCommand::Delete { name } => {
            api.call::<Value>(
                "DELETE",
                &format!("/v1/security-groups/{}", seg(&name)),
                None,
            )?;
            out.done(
                &format!("security group {name} is being deleted"),
                &Value::Null,
            )
        }
    }
}

fn eip(api: &Api, out: &Out, c: EipCommand) -> Result<()> {
    match c {
        EipCommand::Create {
            name,
            network,
            vm,
            ip,
            nic,
        } => {
            let mut body = json!({"name": name, "network": network, "vm": vm});
            if let Some(ip) = ip {
                body["ip"] = Value::from(ip);
            }
            if let Some(nic) = nic {
                body["nic"] = Value::from(nic);
            }
            let answer = api.post("/v1/eips", &body)?;
            out.done(
                &format!("EIP {name}: {} to {vm}", cell(&answer["ip"])),
                &answer,
            )
        }
        EipCommand::List => out.list(
            &api.get("/v1/eips")?,
            &["NAME", "IP", "NETWORK", "VM", "NIC", "NODE"],
            &["name", "ip", "network", "vm", "nic", "node"],
        ),
        EipCommand::Show { name } => out.one(&api.get(&format!("/v1/eips/{}", seg(&name)))?),
        EipCommand::Delete { name } => {
            api.call::<Value>("DELETE", &format!("/v1/eips/{}", seg(&name)), None)?;
            out.done(&format!("EIP {name} is being deleted"), &Value::Null)
        }
    }
}

fn image(api: &Api, out: &Out, c: ImageCommand) -> Result<()> {
    match c {
        ImageCommand::Import {
            name,
            pool,
            file,
            source_url,
            sha256,
            kernel,
            cmdline,
            no_wait,
        } => {
            let source = match (file, source_url) {
                (Some(f), None) => json!({"kind": "file", "path": std::path::absolute(&f)?}),
                (None, Some(u)) => json!({"kind": "url", "url": u}),
                _ => bail!("give --file PATH or --source-url URL"),
            };
            let mut body = json!({"name": name, "pool": pool, "source": source, "kernel": std::path::absolute(&kernel)?, "cmdline": cmdline});
            if let Some(s) = sha256 {
                body["sha256"] = Value::from(s);
            }
            let answer = api.post("/v1/images", &body)?;
            if no_wait || out.json {
                return out.done(&format!("image {name}: importing"), &answer);
            }
            progress(api, &name)
        }
        ImageCommand::List => out.list(
            &api.get("/v1/images")?,
            &["NAME", "POOL", "STATE", "SIZE", "ERROR"],
            &["name", "pool", "state", "size_bytes", "error"],
        ),
        ImageCommand::Show { name } => out.one(&api.get(&format!("/v1/images/{}", seg(&name)))?),
        ImageCommand::Delete { name } => {
            api.call::<Value>("DELETE", &format!("/v1/images/{}", seg(&name)), None)?;
            out.done(&format!("image {name} deleted"), &Value::Null)
        }
    }
}

/// A progress bar on one line until the import ends.
fn progress(api: &Api, name: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let image: Value = api.get(&format!("/v1/images/{}", seg(name)))?;
        let done = image["done_bytes"].as_u64().unwrap_or(0);
        let bar = match image["total_bytes"].as_u64().filter(|t| *t > 0) {
            Some(total) => {
                let filled = usize::try_from(done.min(total) * 30 / total).unwrap_or(0);
                format!(
                    "[{}{}] {:>3}% {} of {} MiB",
                    "#".repeat(filled),
                    ".".repeat(30 - filled),
                    done * 100 / total,
                    done >> 20,
                    total >> 20
                )
            }
            None => format!("{:.1} MiB", done as f64 / f64::from(1 << 20)),
        };
        eprint!("\r{name}: {bar}   ");
        match image["state"].as_str() {
            Some("ready") => {
                eprintln!();
                println!(
                    "image {name}: ready ({} bytes in {})",
                    cell(&image["size_bytes"]),
                    cell(&image["pool"])
                );
                return Ok(());
            }
            Some("failed") => {
                eprintln!();
                bail!("image {name} failed: {}", cell(&image["error"]));
            }
            _ if start.elapsed() > Duration::from_secs(3600) => {
                bail!("image {name} still imports after an hour")
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// "10G", "512M", "4096".
pub fn size(text: &str) -> Result<u64> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .with_context(|| format!("{text:?} is not a size"))?;
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => bail!("{text:?}: the unit is K, M, G or T"),
    };
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .with_context(|| format!("{text:?} is too big"))
}

fn volume(api: &Api, out: &Out, c: VolumeCommand) -> Result<()> {
    let path = |name: &str, what: &str| format!("/v1/volumes/{}{what}", seg(name));
    match c {
        VolumeCommand::Create {
            name,
            pool,
            size: s,
        } => {
            let answer = api.post(
                "/v1/volumes",
                &json!({"name": name, "pool": pool, "size_bytes": size(&s)?}),
            )?;
            out.done(&format!("volume {name} created"), &answer)
        }
        VolumeCommand::List => out.list(
            &api.get("/v1/volumes")?,
            &["NAME", "POOL", "SIZE", "VM"],
            &["name", "pool", "size_bytes", "vm"],
        ),
        VolumeCommand::Show { name } => out.one(&api.get(&path(&name, ""))?),
        VolumeCommand::Delete { name } => {
            api.call::<Value>("DELETE", &path(&name, ""), None)?;
            out.done(&format!("volume {name} deleted"), &Value::Null)
        }
        VolumeCommand::Attach { name, vm } => {
            let answer = api.post(&path(&name, "/attach"), &json!({"vm": vm}))?;
            out.done(&format!("volume {name} attached to {vm}"), &answer)
        }
        VolumeCommand::Detach { name } => {
            let answer = api.post(&path(&name, "/detach"), &json!({}))?;
            out.done(&format!("volume {name} detached"), &answer)
        }
        VolumeCommand::Grow { name, size: s } => {
            let answer = api.post(&path(&name, "/grow"), &json!({"size_bytes": size(&s)?}))?;
            out.done(&format!("volume {name} grown"), &answer)
        }
        VolumeCommand::Snapshot { name, snapshot } => {
            let answer = api.post(&path(&name, "/snapshots"), &json!({"name": snapshot}))?;
            out.done(
                &format!("volume {name}: snapshot {snapshot} taken"),
                &answer,
            )
        }
        VolumeCommand::Rollback { name, snapshot } => {
            api.call::<Value>(
                "POST",
                &path(&name, &format!("/snapshots/{}/rollback", seg(&snapshot))),
                None,
            )?;
            out.done(
                &format!("volume {name} rolled back to {snapshot}"),
                &Value::Null,
            )
        }
    }
}

fn group(api: &Api, out: &Out, c: GroupCommand) -> Result<()> {
    match c {
        GroupCommand::Create {
            name,
            rule,
            nodes,
            soft,
        } => {
            let kind = rule.replace('-', "_");
            let mut r = json!({"kind": kind});
            if kind.starts_with("node_") {
                r["nodes"] = json!(nodes);
            }
            let answer = api.post(
                "/v1/affinity-groups",
                &json!({"name": name, "rule": r, "strength": if soft { "soft" } else { "hard" }}),
            )?;
            out.done(&format!("affinity group {name} created"), &answer)
        }
        GroupCommand::List => out.list(
            &api.get("/v1/affinity-groups")?,
            &["NAME", "RULE", "STRENGTH", "VMS"],
            &["name", "rule", "strength", "vms"],
        ),
        GroupCommand::Delete { name } => {
            api.call::<Value>(
                "DELETE",
                &format!("/v1/affinity-groups/{}", seg(&name)),
                None,
            )?;
            out.done(&format!("affinity group {name} deleted"), &Value::Null)
        }
    }
}

fn events(
    api: &Api,
    out: &Out,
    mut after: u64,
    resource: Option<String>,
    follow: bool,
) -> Result<()> {
    loop {
        let mut path = format!("/v1/events?after={after}");
        if let Some(r) = &resource {
            path.push_str(&format!("&resource={}", seg(r)));
        }
        let list: Value = api.get(&path)?;
        let items = list.as_array().cloned().unwrap_or_default();
        if out.json {
            for e in &items {
                println!("{e}");
            }
        } else {
            for e in &items {
                println!(
                    "{:>6}  {}  {:<44}  {:<14}  {}",
                    cell(&e["seq"]),
                    clock(e["unix_ms"].as_u64().unwrap_or(0)),
                    cell(&e["resource"]),
                    cell(&e["kind"]),
                    cell(&e["message"])
                );
            }
        }
        std::io::stdout().flush()?;
        if let Some(last) = items.last() {
            after = last["seq"].as_u64().unwrap_or(after);
        }
        if !follow {
            return Ok(());
        }
        if items.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A time of day, UTC, to the millisecond.
pub fn clock(unix_ms: u64) -> String {
    let ms = unix_ms % 1000;
    let secs = unix_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{ms:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn settings(api: &Api, out: &Out, set: Vec<String>) -> Result<()> {
    if set.is_empty() {
        return out.one(&api.get("/v1/settings")?);
    }
    let mut patch = serde_json::Map::new();
    for pair in &set {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?}: want KEY=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
        patch.insert(key.replace('.', "_"), value);
    }
    let answer: Value = api.call("PATCH", "/v1/settings", Some(&Value::Object(patch)))?;
    out.one(&answer)
}

fn token(api: &Api, out: &Out, c: TokenCommand) -> Result<()> {
    match c {
        TokenCommand::Create { name, role } => {
            let answer = api.post("/v1/tokens", &json!({"name": name, "role": role}))?;
            if out.json {
                return out.raw(&answer);
            }
            println!("token {name} ({role}): {}", cell(&answer["secret"]));
            println!("(shown this once)");
            Ok(())
        }
        TokenCommand::List => out.list(
            &api.get("/v1/tokens")?,
            &["NAME", "ROLE", "CREATED"],
            &["name", "role", "created_unix_ms"],
        ),
        TokenCommand::Delete { name } => {
            api.call::<Value>("DELETE", &format!("/v1/tokens/{}", seg(&name)), None)?;
            out.done(&format!("token {name} deleted"), &Value::Null)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_sizes_parse() {
        assert_eq!(
            rule("ingress tcp 22 0.0.0.0/0 accept").unwrap(),
            json!({"direction": "ingress", "protocol": "tcp", "ports": {"from": 22, "to": 22}, "remote": {"cidr": "0.0.0.0/0"}, "action": "accept"})
        );
        assert_eq!(
            rule("egress udp 1000-2000 group:web").unwrap()["remote"],
            json!({"group": "web"})
        );
        assert!(rule("ingress").is_err());
        assert!(rule("ingress tcp x").is_err());
        assert_eq!(clock(86_400_000 + 3_723_004), "01:02:03.004Z");
        assert_eq!(size("10G").unwrap(), 10 << 30);
        assert_eq!(size("512MiB").unwrap(), 512 << 20);
        assert_eq!(size("4096").unwrap(), 4096);
        assert!(size("1Q").is_err());
        assert!(size("G").is_err());
        assert!(size("99999999999T").is_err());
    }
}
