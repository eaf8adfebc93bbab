//! `cluster NAME NODES READY_FILE`: the cluster harness as a process, for `scripts/demo` and
//! hands-on use. It brings up NODES nodes (namespaces running netd, storaged and hostd) and a
//! controller on the embedded store, writes READY_FILE (JSON: the controller's socket and
//! token, each node's address, token, data address and hostd config), then holds everything
//! until SIGTERM or SIGINT, when it takes it all down again. SIGUSR1 starts the controller
//! again (after it was killed, say) on the same store. SIGUSR2 carries out the order in
//! `READY_FILE.power`: `off NODE` kills every process of the node (a power loss), `on NODE`
//! starts its daemons again.

use std::time::Duration;

use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, name, nodes, ready] = args.as_slice() else {
        eprintln!("usage: cluster NAME NODES READY_FILE");
        std::process::exit(2);
    };
    let Ok(n) = nodes.parse::<usize>() else {
        eprintln!("cluster: NODES must be a number, not {nodes:?}");
        std::process::exit(2);
    };
    let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGUSR2]);
    let Ok(mut signals) = signals else {
        eprintln!("cluster: installing signal handlers failed");
        std::process::exit(1);
    };
    let mut cluster = triad_tests::Cluster::new(name, n);
    let mut controller = cluster.start_controller(0, None);
    let about = json!({
        "dir": cluster.dir(),
        "shared_dir": cluster.shared,
        "controller": {
            "socket": controller.daemon.socket,
            "address": controller.addr,
            "token": controller.token(),
            "pid": controller.daemon.pid(),
            "namespace": controller.ns.name,
            "log": controller.daemon.log,
        },
        "nodes": cluster.nodes.iter().map(|node| json!({
            "name": node.name,
            "address": node.hostd_addr(),
            "token": node.hostd_token(),
            "data_address": node.addr(2),
            "hostd_config": node.dir.join("triad-hostd.json"),
            "namespace": node.ns.name,
        })).collect::<Vec<_>>(),
    });
    let tmp = format!("{ready}.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(&about).unwrap_or_default(),
    )
    .and_then(|()| std::fs::rename(&tmp, ready))
    .unwrap_or_else(|e| panic!("writing {ready}: {e}"));
    for signal in signals.forever() {
        if signal == SIGUSR1 {
            controller.daemon.restart();
            eprintln!("cluster {name}: the controller runs again");
            continue;
        }
        if signal == SIGUSR2 {
            let order = std::fs::read_to_string(format!("{ready}.power")).unwrap_or_default();
            let words: Vec<&str> = order.split_whitespace().collect();
            let node = words
                .get(1)
                .and_then(|w| cluster.nodes.iter_mut().find(|n| n.name == *w));
            match (words.first(), node) {
                (Some(&"off"), Some(node)) => {
                    node.kill_all();
                    eprintln!("cluster {name}: node {} lost its power", node.name);
                }
                (Some(&"on"), Some(node)) => {
                    node.power_on();
                    eprintln!("cluster {name}: node {} is on again", node.name);
                }
                _ => eprintln!(
                    "cluster {name}: {ready}.power should say `off NODE` or `on NODE` of a node here, not {order:?}"
                ),
            }
            continue;
        }
        eprintln!("cluster {name}: taking it down");
        break;
    }
    drop(controller);
    drop(cluster);
    std::thread::sleep(Duration::from_millis(10));
}
