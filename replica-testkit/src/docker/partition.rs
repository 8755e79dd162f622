//! Partitions on the Docker backend: iptables DROP rules that cut one node off, in two
//! places.
//!
//! - Inside the node's container, in its network namespace (entered with `nsenter`): every
//!   packet in or out on an interface but the loopback is dropped, so nothing reaches the
//!   server or leaves it, from the other containers (replication) or from this machine.
//! - On this machine's loopback, for the node's published port: Docker's userland proxy
//!   owns that port on 127.0.0.1 and would otherwise still complete the TCP handshake of a
//!   new connection itself (and then hang); with the packets to and from the port dropped
//!   in the `INPUT` chain (where a drop is silent: in `OUTPUT` the sender would get an
//!   error), a new connection's SYN goes unanswered and its connect times out, and an open
//!   connection hangs, as across a real partition.
//!
//! The container's rules go with its network namespace (a restart heals the node); the
//! machine's rules carry a comment naming the cluster and its owner, are removed by a heal
//! and when the cluster drops, and those of a dead owner by the next cluster's sweep.
//! Both need root, `nsenter` and `iptables` here.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use crate::{Error, run, with_output};

/// The rules put into a node's network namespace: chain, then the match and target.
const NODE_RULES: [[&str; 6]; 2] = [
    ["INPUT", "!", "-i", "lo", "-j", "DROP"],
    ["OUTPUT", "!", "-o", "lo", "-j", "DROP"],
];
/// The word that starts the comment of every rule this machine's `INPUT` chain gets.
const COMMENT_PREFIX: &str = "diesel-replica-testkit";

/// The partitions of one cluster.
#[derive(Debug)]
pub(super) struct Partitions {
    /// The comment of this cluster's rules on this machine: `PREFIX ID OWNER`.
    comment: String,
    /// The published ports whose rules on this machine may be in place.
    cut: Mutex<BTreeSet<u16>>,
}

impl Partitions {
    pub(super) fn new(id: &str, owner: &str) -> Partitions {
        Partitions {
            comment: format!("{COMMENT_PREFIX} {id} {owner}"),
            cut: Mutex::new(BTreeSet::new()),
        }
    }

    /// Cuts off the node whose container's main process is `pid` (in this machine's PID
    /// namespace) and whose port published on 127.0.0.1 is `port`. Cutting twice is once.
    pub(super) fn cut(&self, pid: u32, port: u16) -> Result<(), Error> {
        self.cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port);
        for rule in loopback_rules(port, &self.comment) {
            ensure(iptables(None), &rule, true)?;
        }
        for rule in NODE_RULES {
            ensure(iptables(Some(pid)), &rule, true)?;
        }
        Ok(())
    }

    /// Undoes [`Partitions::cut`]; `pid` is `None` when the container does not run (its
    /// network namespace, and the rules in it, are gone). Healing a node that is not cut
    /// does nothing.
    pub(super) fn heal(&self, pid: Option<u32>, port: u16) -> Result<(), Error> {
        if let Some(pid) = pid {
            for rule in NODE_RULES {
                ensure(iptables(Some(pid)), &rule, false)?;
            }
        }
        for rule in loopback_rules(port, &self.comment) {
            ensure(iptables(None), &rule, false)?;
        }
        self.cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&port);
        Ok(())
    }

    /// Removes every rule of this cluster on this machine (the containers' go with them);
    /// errors are ignored (this runs in `drop`).
    pub(super) fn heal_all(&self) {
        let ports = std::mem::take(&mut *self.cut.lock().unwrap_or_else(PoisonError::into_inner));
        for port in ports {
            for rule in loopback_rules(port, &self.comment) {
                let _ = ensure(iptables(None), &rule, false);
            }
        }
    }
}

/// Removes the rules on this machine whose owner (the comment's third word, see
/// [`Partitions`]) `is_gone` says is gone. Without root or iptables there is nothing to
/// remove (nothing could have been added), and errors are ignored.
pub(super) fn remove_orphan_rules(is_gone: impl Fn(&str) -> bool) {
    let Ok(listed) = run(
        Command::new("iptables")
            .args(["-w", "-S", "INPUT"])
            .stdin(Stdio::null()),
        None,
    ) else {
        return;
    };
    for line in listed.lines() {
        let Some((comment, port)) = parse_rule(line) else {
            continue;
        };
        let owner = comment.split(' ').nth(2).unwrap_or_default();
        if is_gone(owner) {
            for rule in loopback_rules(port, comment) {
                let _ = ensure(iptables(None), &rule, false);
            }
        }
    }
}

/// The comment and port of a rule of ours in `iptables -S` output, such as
/// `-A INPUT -i lo -p tcp -m tcp --dport 5432 -m comment --comment "PREFIX ID OWNER" -j DROP`.
fn parse_rule(line: &str) -> Option<(&str, u16)> {
    let start = line.find("--comment \"")? + "--comment \"".len();
    let comment = &line[start..start + line[start..].find('"')?];
    if !comment.starts_with(&format!("{COMMENT_PREFIX} ")) {
        return None;
    }
    let mut words = line.split_whitespace();
    words.find(|word| *word == "--dport" || *word == "--sport")?;
    Some((comment, words.next()?.parse().ok()?))
}

/// The rules of this machine's `INPUT` chain that drop the loopback packets to and from
/// `port` (to the proxy, and from it to its clients).
fn loopback_rules(port: u16, comment: &str) -> [Vec<String>; 2] {
    ["--dport", "--sport"].map(|dir| {
        ["INPUT", "-i", "lo", "-p", "tcp", dir, &port.to_string()]
            .into_iter()
            .chain(["-m", "comment", "--comment", comment, "-j", "DROP"])
            .map(str::to_owned)
            .collect()
    })
}

/// `iptables -w`, on this machine or (with `pid`) in the network namespace of that process.
fn iptables(pid: Option<u32>) -> Command {
    let mut cmd = match pid {
        Some(pid) => {
            let mut cmd = Command::new("nsenter");
            cmd.args(["-t", &pid.to_string(), "-n", "iptables"]);
            cmd
        }
        None => Command::new("iptables"),
    };
    cmd.arg("-w").stdin(Stdio::null());
    cmd
}

/// Makes `rule` (a chain and a rule specification) present or absent: checked with `-C`,
/// then inserted at the top (`-I`) or deleted (`-D`) if need be.
fn ensure<S: AsRef<str>>(base: Command, rule: &[S], present: bool) -> Result<(), Error> {
    let with = |action: &str| {
        let mut cmd = Command::new(base.get_program());
        cmd.args(base.get_args())
            .arg(action)
            .args(rule.iter().map(AsRef::as_ref))
            .stdin(Stdio::null());
        cmd
    };
    let there = with("-C")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if there == present {
        return Ok(());
    }
    let action = if present { "-I" } else { "-D" };
    run(&mut with(action), None).map(drop).map_err(|err| {
        with_output(
            err,
            "(a partition drops packets with iptables, here and in the node's network \
                 namespace: it needs root, nsenter and iptables on this machine)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rule_finds_our_comment_and_port() {
        let ours = "-A INPUT -i lo -p tcp -m tcp --sport 40001 -m comment --comment \
                    \"diesel-replica-testkit 12-0-ab h/12/345\" -j DROP";
        assert_eq!(
            parse_rule(ours),
            Some(("diesel-replica-testkit 12-0-ab h/12/345", 40001))
        );
        let theirs = "-A INPUT -p tcp -m tcp --dport 22 -m comment --comment \"ssh\" -j ACCEPT";
        assert_eq!(parse_rule(theirs), None);
        assert_eq!(parse_rule("-P INPUT ACCEPT"), None);
    }

    #[test]
    fn loopback_rules_drop_both_directions_of_the_port() {
        let [to, from] = loopback_rules(5432, "c");
        assert_eq!(
            to.join(" "),
            "INPUT -i lo -p tcp --dport 5432 -m comment --comment c -j DROP"
        );
        assert!(from.join(" ").contains("--sport 5432"));
    }
}
