//! Checks of an ensure that need nothing but the request: a malformed one is refused (400)
//! before anything is looked at or made.

use std::collections::BTreeSet;

use triad_api::hostd::{VmSpec, MAX_DISKS};

use crate::Error;

/// The most vCPUs one VM has (the VMM's limit).
pub const MAX_VCPUS: u32 = 254;
/// The least memory the VMM boots with.
pub const MIN_MEMORY_MIB: u64 = 4;
/// A NIC's id with the VM's UUID names its netd port, which is at most 64 characters.
const MAX_NIC_ID: usize = 64 - 37;
/// A disk's id is the serial the guest reads, at most 20 bytes.
const MAX_DISK_ID: usize = 20;

/// A UUID as the controller writes them: 8-4-4-4-12 lowercase hex digits.
pub fn uuid(uuid: &str) -> Result<(), Error> {
    let groups: Vec<&str> = uuid.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = uuid
        .chars()
        .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c));
    if lengths != [8, 4, 4, 4, 12] || !hex {
        return Err(Error::invalid(
            "uuid",
            format!("{uuid:?} is not a UUID (8-4-4-4-12 lowercase hex digits)"),
        ));
    }
    Ok(())
}

pub fn spec(spec: &VmSpec) -> Result<(), Error> {
    hostname(&spec.name)?;
    if !(1..=MAX_VCPUS).contains(&spec.vcpus) {
        return Err(Error::invalid(
            "vcpus",
            format!("{} is not between 1 and {MAX_VCPUS}", spec.vcpus),
        ));
    }
    if spec.memory_mib < MIN_MEMORY_MIB {
        return Err(Error::invalid(
            "memory_mib",
            format!(
                "{} MiB is below the {MIN_MEMORY_MIB} MiB a VM needs",
                spec.memory_mib
            ),
        ));
    }
    if !spec.boot.kernel.is_absolute() {
        return Err(Error::invalid(
            "boot.kernel",
            format!("{} is not an absolute path", spec.boot.kernel.display()),
        ));
    }
    if spec.disks.len() > MAX_DISKS {
        return Err(Error::invalid(
            "disks",
            format!("{} disks; a VM has at most {MAX_DISKS}", spec.disks.len()),
        ));
    }
    let mut ids = BTreeSet::new();
    let mut volumes = BTreeSet::new();
    for (i, disk) in spec.disks.iter().enumerate() {
        let field = |name: &str| format!("disks[{i}].{name}");
        identifier(&field("id"), &disk.id, MAX_DISK_ID)?;
        if !ids.insert(&disk.id) {
            return Err(Error::invalid(
                field("id"),
                format!("{:?} is used twice", disk.id),
            ));
        }
        if disk.pool.is_empty() {
            return Err(Error::invalid(field("pool"), "empty"));
        }
        if disk.volume.is_empty() {
            return Err(Error::invalid(field("volume"), "empty"));
        }
        if !volumes.insert((&disk.pool, &disk.volume)) {
            return Err(Error::invalid(
                field("volume"),
                format!(
                    "{}/{} is another disk of this VM too",
                    disk.pool, disk.volume
                ),
            ));
        }
        match (&disk.source, disk.size_bytes) {
            (Some(_), None) => {
                return Err(Error::invalid(
                    field("size_bytes"),
                    "required with a source: the size to make the volume",
                ))
            }
            (Some(_), Some(0)) => return Err(Error::invalid(field("size_bytes"), "is 0")),
            (None, Some(_)) => {
                return Err(Error::invalid(
                    field("size_bytes"),
                    "only with a source: an existing volume keeps its size",
                ))
            }
            _ => {}
        }
        if disk.keep && disk.source.is_none() {
            return Err(Error::invalid(
                field("keep"),
                "only with a source: an existing volume is always kept",
            ));
        }
    }
    let mut ids = BTreeSet::new();
    let mut macs = BTreeSet::new();
    for (i, nic) in spec.nics.iter().enumerate() {
        let field = |name: &str| format!("nics[{i}].{name}");
        identifier(&field("id"), &nic.id, MAX_NIC_ID)?;
        if nic.id.chars().any(|c| c.is_ascii_uppercase() || c == '_') {
            return Err(Error::invalid(
                field("id"),
                format!("{:?}: lowercase letters, digits and '-' only", nic.id),
            ));
        }
        if !ids.insert(&nic.id) {
            return Err(Error::invalid(
                field("id"),
                format!("{:?} is used twice", nic.id),
            ));
        }
        if nic.mac.is_multicast() {
            return Err(Error::invalid(
                field("mac"),
                format!("{} is a multicast address", nic.mac),
            ));
        }
        if nic.mac.0 == [0; 6] {
            return Err(Error::invalid(field("mac"), "is all zeroes"));
        }
        if !macs.insert(nic.mac) {
            return Err(Error::invalid(
                field("mac"),
                format!("{} is another NIC of this VM too", nic.mac),
            ));
        }
        if nic.network.is_empty() {
            return Err(Error::invalid(field("network"), "empty"));
        }
    }
    Ok(())
}

/// A VM's name is its host name: 1 to 63 letters, digits and '-', not starting or ending
/// with '-'.
fn hostname(name: &str) -> Result<(), Error> {
    let ok = (1..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        return Err(Error::invalid(
            "name",
            format!(
                "{name:?} is not a host name (1 to 63 letters, digits and '-', not at either end)"
            ),
        ));
    }
    Ok(())
}

fn identifier(field: &str, id: &str, max: usize) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= max
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(Error::invalid(
            field,
            format!("{id:?}: 1 to {max} letters, digits, '-' and '_'"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_api::hostd::{DiskSpec, NicSpec};
    use triad_api::net::Mac;
    use triad_api::storage::VolumeSource;
    use triad_api::vmm::BootConfig;

    fn vm() -> VmSpec {
        VmSpec {
            name: "web-1".into(),
            generation: 1,
            vcpus: 1,
            memory_mib: 64,
            boot: BootConfig {
                kernel: "/boot/guest.elf".into(),
                initrd: None,
                cmdline: String::new(),
            },
            disks: vec![DiskSpec {
                id: "root".into(),
                pool: "local".into(),
                volume: "v1".into(),
                source: Some(VolumeSource::Blank),
                size_bytes: Some(1 << 20),
                keep: false,
                read_only: false,
                cache: Default::default(),
                qos: None,
            }],
            nics: vec![NicSpec {
                id: "eth0".into(),
                network: "n1".into(),
                mac: Mac([0x52, 0x54, 0, 0, 0, 1]),
                ip: None,
                security_groups: vec![],
                qos: None,
            }],
            user_data: None,
            ssh_keys: vec![],
            ha: Default::default(),
            power: Default::default(),
        }
    }

    type Change = Box<dyn Fn(&mut VmSpec)>;

    fn field_of(result: Result<(), Error>) -> String {
        match result {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn uuids_must_be_canonical() {
        uuid("0c4f5d8e-1b2a-4c3d-9e8f-0a1b2c3d4e5f").unwrap();
        for bad in [
            "",
            "0C4F5D8E-1B2A-4C3D-9E8F-0A1B2C3D4E5F",
            "0c4f5d8e1b2a4c3d9e8f0a1b2c3d4e5f",
            "0c4f5d8e-1b2a-4c3d-9e8f-0a1b2c3d4e5g",
            "../../etc",
        ] {
            assert_eq!(field_of(uuid(bad)), "uuid", "{bad}");
        }
    }

    #[test]
    fn a_good_spec_passes() {
        spec(&vm()).unwrap();
    }

    #[test]
    fn each_mistake_names_its_field() {
        let cases: Vec<(&str, Change)> = vec![
            ("name", Box::new(|v| v.name = "-bad".into())),
            ("name", Box::new(|v| v.name = "a.b".into())),
            ("vcpus", Box::new(|v| v.vcpus = 0)),
            ("memory_mib", Box::new(|v| v.memory_mib = 1)),
            (
                "boot.kernel",
                Box::new(|v| v.boot.kernel = "guest.elf".into()),
            ),
            (
                "disks[0].size_bytes",
                Box::new(|v| v.disks[0].size_bytes = None),
            ),
            ("disks[0].id", Box::new(|v| v.disks[0].id = "x".repeat(21))),
            (
                "disks[1].id",
                Box::new(|v| {
                    let mut d = v.disks[0].clone();
                    d.volume = "v2".into();
                    v.disks.push(d)
                }),
            ),
            (
                "disks[1].volume",
                Box::new(|v| {
                    let mut d = v.disks[0].clone();
                    d.id = "data".into();
                    v.disks.push(d)
                }),
            ),
            (
                "disks[0].keep",
                Box::new(|v| {
                    v.disks[0].source = None;
                    v.disks[0].size_bytes = None;
                    v.disks[0].keep = true;
                }),
            ),
            (
                "nics[0].mac",
                Box::new(|v| v.nics[0].mac = Mac([1, 0, 0, 0, 0, 1])),
            ),
            ("nics[0].id", Box::new(|v| v.nics[0].id = "Eth0".into())),
            ("nics[0].network", Box::new(|v| v.nics[0].network.clear())),
            (
                "disks",
                Box::new(|v| {
                    v.disks = (0..25)
                        .map(|i| {
                            let mut d = v.disks[0].clone();
                            d.id = format!("d{i}");
                            d.volume = format!("v{i}");
                            d
                        })
                        .collect()
                }),
            ),
        ];
        for (field, change) in cases {
            let mut v = vm();
            change(&mut v);
            assert_eq!(field_of(spec(&v)), field);
        }
    }
}
