//! Open vSwitch through `ovs-vsctl`: the trunk bridges of VLAN networks. Every bridge and port
//! Triad makes carries `external_ids:triad-owner`, so that netd finds its own after a restart
//! and never touches anyone else's.

use std::process::Stdio;

use serde_json::Value;
use triad_api::tools::HostTool;

use crate::Error;

pub const OVS_VSCTL: HostTool = HostTool {
    command: "ovs-vsctl",
    package: "openvswitch-switch",
    needed_for: "VLAN networks",
};

const OWNER_KEY: &str = "triad-owner";

/// A port as Open vSwitch's database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRecord {
    pub bridge: String,
    pub name: String,
    pub vid: Option<u16>,
    pub owner: Option<String>,
}

/// The database at `db` (`unix:PATH` or `tcp:IP:PORT`).
#[derive(Debug, Clone)]
pub struct Ovs {
    db: String,
}

impl Ovs {
    pub fn new(db: String) -> Self {
        Self { db }
    }

    /// Runs one `ovs-vsctl` transaction. It waits until ovs-vswitchd has applied it, so that a
    /// port exists in the datapath once this returns.
    async fn vsctl(&self, args: &[&str]) -> Result<String, Error> {
        let out = tokio::process::Command::new(OVS_VSCTL.command)
            .arg(format!("--db={}", self.db))
            .arg("--timeout=10")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::Unprocessable(OVS_VSCTL.missing().to_string())
                } else {
                    Error::System(format!("running ovs-vsctl: {e}"))
                }
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let message = stderr.trim();
            return Err(if message.contains("database connection failed") {
                Error::Unprocessable(format!(
                    "VLAN networks need Open vSwitch, and its database {} does not answer: {message}",
                    self.db
                ))
            } else if message.contains("timeout") {
                Error::Unprocessable(format!(
                    "Open vSwitch took the change but ovs-vswitchd did not apply it within 10 s; is it running? ({message})"
                ))
            } else {
                Error::System(format!("ovs-vsctl {}: {message}", args.join(" ")))
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every port of every bridge.
    pub async fn ports(&self) -> Result<Vec<PortRecord>, Error> {
        let bridges = self
            .vsctl(&["--format=json", "--columns=name,ports", "list", "Bridge"])
            .await?;
        let ports = self
            .vsctl(&[
                "--format=json",
                "--columns=_uuid,name,tag,external_ids",
                "list",
                "Port",
            ])
            .await?;
        parse_ports(&bridges, &ports)
            .ok_or_else(|| Error::System("ovs-vsctl printed tables netd cannot read".into()))
    }

    /// The bridges Triad made: (name, owner).
    pub async fn owned_bridges(&self) -> Result<Vec<(String, String)>, Error> {
        let out = self
            .vsctl(&[
                "--format=json",
                "--columns=name,external_ids",
                "list",
                "Bridge",
            ])
            .await?;
        parse_owned_bridges(&out)
            .ok_or_else(|| Error::System("ovs-vsctl printed tables netd cannot read".into()))
    }

    /// Makes bridge `bridge` (userspace datapath) with `uplink` as its trunk port.
    pub async fn ensure_trunk(&self, bridge: &str, uplink: &str, owner: &str) -> Result<(), Error> {
        let owner = format!("external_ids:{OWNER_KEY}={}", quote(owner));
        self.vsctl(&[
            "--may-exist",
            "add-br",
            bridge,
            "--",
            "set",
            "Bridge",
            bridge,
            "datapath_type=netdev",
            &owner,
            "--",
            "--may-exist",
            "add-port",
            bridge,
            uplink,
            "--",
            "set",
            "Port",
            uplink,
            &owner,
        ])
        .await
        .map(drop)
    }

    /// Makes `port` an access port of `bridge` for VLAN `vid`; with `replace`, deletes it first,
    /// so that the switch opens the interface afresh. (The deletion must be a transaction of its
    /// own: a port deleted and added in one keeps its stale device in ovs-vswitchd.)
    pub async fn ensure_access(
        &self,
        bridge: &str,
        port: &str,
        vid: u16,
        owner: &str,
        replace: bool,
    ) -> Result<(), Error> {
        let tag = format!("tag={vid}");
        let owner = format!("external_ids:{OWNER_KEY}={}", quote(owner));
        if replace {
            self.vsctl(&["--if-exists", "del-port", port]).await?;
        }
        self.vsctl(&[
            "--may-exist",
            "add-port",
            bridge,
            port,
            "--",
            "set",
            "Port",
            port,
            &tag,
            &owner,
        ])
        .await
        .map(drop)
    }

    /// Why the switch cannot use interface `name`, if it cannot.
    pub async fn interface_error(&self, name: &str) -> Result<Option<String>, Error> {
        let out = self
            .vsctl(&[
                "--format=json",
                "--columns=error,ofport",
                "list",
                "Interface",
                name,
            ])
            .await?;
        let table: Value = serde_json::from_str(&out)
            .map_err(|e| Error::System(format!("reading ovs-vsctl's answer: {e}")))?;
        let row = &table["data"][0];
        if let Some(error) = row[0].as_str() {
            return Ok(Some(error.to_owned()));
        }
        Ok((row[1].as_i64() == Some(-1)).then(|| "it has no OpenFlow port".to_owned()))
    }

    pub async fn delete_port(&self, port: &str) -> Result<(), Error> {
        self.vsctl(&["--if-exists", "del-port", port])
            .await
            .map(drop)
    }

    pub async fn delete_bridge(&self, bridge: &str) -> Result<(), Error> {
        self.vsctl(&["--if-exists", "del-br", bridge])
            .await
            .map(drop)
    }
}

/// An OVSDB string atom: quoted, so that the colons of an owner are not read as a key.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The members of an OVSDB JSON column: `["set", [..]]` for zero or several, the value itself
/// for one.
fn members(value: &Value) -> Vec<&Value> {
    match value.as_array() {
        Some(pair) if pair.first().and_then(Value::as_str) == Some("set") => pair
            .get(1)
            .and_then(Value::as_array)
            .map(|items| items.iter().collect())
            .unwrap_or_default(),
        _ => vec![value],
    }
}

fn uuid(value: &Value) -> Option<&str> {
    match value.as_array()?.as_slice() {
        [kind, id] if kind == "uuid" => id.as_str(),
        _ => None,
    }
}

/// The value of `triad-owner` in an `external_ids` cell.
fn owner(cell: &Value) -> Option<String> {
    cell.as_array()?
        .get(1)?
        .as_array()?
        .iter()
        .filter_map(|pair| pair.as_array())
        .find(|pair| pair.first().and_then(Value::as_str) == Some(OWNER_KEY))
        .and_then(|pair| pair.get(1)?.as_str().map(str::to_owned))
}

/// `list Bridge` (name, external_ids) in `--format=json`: the bridges with an owner.
fn parse_owned_bridges(bridges: &str) -> Option<Vec<(String, String)>> {
    let bridges: Value = serde_json::from_str(bridges).ok()?;
    let mut owned = Vec::new();
    for row in bridges["data"].as_array()? {
        if let Some(owner) = owner(row.get(1)?) {
            owned.push((row.get(0)?.as_str()?.to_owned(), owner));
        }
    }
    Some(owned)
}

/// Joins `list Bridge` (name, ports) to `list Port` (_uuid, name, tag, external_ids), both in
/// `--format=json`.
fn parse_ports(bridges: &str, ports: &str) -> Option<Vec<PortRecord>> {
    let bridges: Value = serde_json::from_str(bridges).ok()?;
    let ports: Value = serde_json::from_str(ports).ok()?;
    let mut bridge_of = std::collections::HashMap::new();
    for row in bridges["data"].as_array()? {
        let name = row.get(0)?.as_str()?;
        for port in members(row.get(1)?) {
            bridge_of.insert(uuid(port)?.to_owned(), name.to_owned());
        }
    }
    let mut records = Vec::new();
    for row in ports["data"].as_array()? {
        let id = uuid(row.get(0)?)?;
        let owner = owner(row.get(3)?);
        records.push(PortRecord {
            // A port no bridge lists is being deleted: not on any bridge.
            bridge: bridge_of.get(id).cloned().unwrap_or_default(),
            name: row.get(1)?.as_str()?.to_owned(),
            vid: row.get(2)?.as_u64().and_then(|v| u16::try_from(v).ok()),
            owner,
        });
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_joined_to_their_bridges() {
        let bridges = r#"{"data":[["tov1",["set",[["uuid","a"],["uuid","b"]]]],["other",["uuid","c"]]],"headings":["name","ports"]}"#;
        let ports = r#"{"data":[
            [["uuid","a"],"eth1",["set",[]],["map",[["triad-owner","triad:uplink:eth1"]]]],
            [["uuid","b"],"tvo1",100,["map",[["triad-owner","triad:network:blue"],["x","y"]]]],
            [["uuid","c"],"foreign",7,["map",[]]]
        ],"headings":["_uuid","name","tag","external_ids"]}"#;
        let records = parse_ports(bridges, ports).unwrap();
        assert_eq!(
            records,
            vec![
                PortRecord {
                    bridge: "tov1".into(),
                    name: "eth1".into(),
                    vid: None,
                    owner: Some("triad:uplink:eth1".into()),
                },
                PortRecord {
                    bridge: "tov1".into(),
                    name: "tvo1".into(),
                    vid: Some(100),
                    owner: Some("triad:network:blue".into()),
                },
                PortRecord {
                    bridge: "other".into(),
                    name: "foreign".into(),
                    vid: Some(7),
                    owner: None,
                },
            ]
        );
        assert!(parse_ports("{}", ports).is_none());
    }

    #[test]
    fn bridges_are_read_with_their_owners() {
        let bridges = r#"{"data":[["tov1",["map",[["triad-owner","triad:uplink:eth1"]]]],["other",["map",[]]]],"headings":["name","external_ids"]}"#;
        assert_eq!(
            parse_owned_bridges(bridges).unwrap(),
            vec![("tov1".to_owned(), "triad:uplink:eth1".to_owned())]
        );
    }

    #[test]
    fn owners_are_quoted_atoms() {
        assert_eq!(quote("triad:network:a"), "\"triad:network:a\"");
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
    }
}
