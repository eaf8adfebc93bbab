//! nftables rulesets, loaded whole and atomically with `nft -f -`.

use tokio::io::AsyncWriteExt;
use triad_api::tools::HostTool;

use crate::Error;

pub const NFT: HostTool = HostTool {
    command: "nft",
    package: "nftables",
    needed_for: "security groups, EIPs and the fences around DHCP and metadata",
};

/// Loads `rules` in one transaction: all of it takes effect, or none.
pub async fn apply(rules: &str) -> Result<(), Error> {
    let failed = |e: std::io::Error| Error::System(format!("running nft: {e}"));
    let mut child = tokio::process::Command::new(NFT.command)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(failed)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes()).await.map_err(failed)?;
    }
    let out = child.wait_with_output().await.map_err(failed)?;
    if !out.status.success() {
        return Err(Error::System(format!(
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The listing of `tables` ("FAMILY NAME"), for diagnostics; what nft says when it cannot.
pub async fn list(tables: &[&str]) -> String {
    let mut text = String::new();
    for table in tables {
        let mut args = vec!["list", "table"];
        args.extend(table.split_whitespace());
        match tokio::process::Command::new(NFT.command)
            .args(&args)
            .output()
            .await
        {
            Ok(out) if out.status.success() => text += &String::from_utf8_lossy(&out.stdout),
            Ok(out) => text += &String::from_utf8_lossy(&out.stderr),
            Err(e) => text += &format!("running nft: {e}\n"),
        }
    }
    text
}
