//! The routing decision: which consumers one event goes to.
//!
//! Consumers are local (subscriptions, client sessions) or remote: a peer
//! node's link, whose subscriptions stand for that node's interest. An event
//! published here ([`Scope::Local`]) goes to
//!
//! - every local plain subscription it matches;
//! - every peer with matching plain interest, once per peer however many of
//!   its patterns match (the tag says "plain": [`PLAIN_TAG`]);
//! - for each queue group, exactly one member mesh-wide: a local member if one
//!   has room (awake ones first), else a peer with a member (the tag is the
//!   peer's own id for that interest entry, so it knows which group).
//!
//! An event that arrived from a peer ([`Scope::Forwarded`]) never goes to a
//! peer again (one hop: the mesh is full), and only to the local consumers the
//! sending node chose it for: plain subscriptions if it says so, and one local
//! member of each group it names.

use super::Target;
use super::backlog::Backlog;
use super::queue::Outcome;
use super::wakes::Waking;
use crate::PublishError;
use crate::log::{AppendError, Holds, RecordRef};
use crate::sublist::{MatchResult, QueueGroup};

/// The tag of a delivery to a peer that stands for its plain interest.
pub const PLAIN_TAG: u64 = u64::MAX;

/// Where an event may go.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Published on this node: local consumers and peers.
    Local,
    /// Forwarded by a peer: local consumers only, as the peer chose.
    Forwarded {
        /// Deliver to local plain subscriptions.
        plain: bool,
        /// Deliver to one local member of each of these queue groups.
        groups: &'a [&'a str],
    },
}

/// Writes the event once (with `append`, given the most holds it may need)
/// and hands one hold to each chosen consumer, waking them as `waking` says.
/// Returns the number of deliveries (made, or owed: a `Block` consumer
/// without room is owed its delivery in `backlog`, which the caller flushes
/// before it publishes again). Holds not needed (a peer matched twice, a
/// group out of scope) are released when the unused rest of `Holds` drops.
pub(crate) fn route(
    result: &MatchResult<Target>,
    round_robin: &mut usize,
    scope: Scope<'_>,
    (backlog, waking): (&mut Backlog, &mut Waking<'_>),
    append: impl FnOnce(u32) -> Result<Holds, AppendError>,
) -> Result<usize, PublishError> {
    let most = result.delivery_count();
    if most == 0 {
        return Ok(0);
    }
    let mut holds = match append(most as u32) {
        Ok(holds) => holds,
        Err(AppendError::OutOfMemory) => {
            // No silent loss: every consumer this event was for counts it.
            result.plain.iter().for_each(Target::miss);
            for group in &result.groups {
                group.members[*round_robin % group.members.len()].miss();
            }
            return Err(PublishError::OutOfMemory(most));
        }
    };
    let mut delivered = 0;
    let plain_wanted = match scope {
        Scope::Local => true,
        Scope::Forwarded { plain, .. } => plain,
    };
    if plain_wanted {
        for (index, target) in result.plain.iter().enumerate() {
            if target.remote && !forward_plain(scope, &result.plain[..index], target) {
                continue;
            }
            let record = holds.next().expect("one hold per possible delivery");
            let tag = if target.remote { PLAIN_TAG } else { target.tag };
            if let Outcome::Full(record) = target.deliver_tagged(record, tag, backlog.lanes()) {
                backlog.owe(target, record, tag);
            }
            delivered += 1;
        }
    }
    for group in &result.groups {
        if let Scope::Forwarded { groups, .. } = scope
            && !groups.contains(&&*group.name)
        {
            continue;
        }
        *round_robin = round_robin.wrapping_add(1);
        let record = holds.next().expect("one hold per possible delivery");
        if deliver_to_group(group, record, *round_robin, scope, (backlog, waking)) {
            delivered += 1;
        }
    }
    waking.delivered_to_plain(&result.plain, backlog.lanes());
    Ok(delivered)
}

/// True if a remote plain target should get this event: published here, and
/// no earlier target of the same peer already got it.
fn forward_plain(scope: Scope<'_>, earlier: &[Target], target: &Target) -> bool {
    matches!(scope, Scope::Local)
        && !earlier
            .iter()
            .any(|other| other.remote && std::sync::Arc::ptr_eq(&other.queue, &target.queue))
}

/// Gives the record to one member of `group`, preferring, in order: local
/// members whose consumer is awake (waking a parked thread costs 20–25 µs on
/// a VM), any local member with room, a peer with room (forwarded events
/// never go to peers), and finally the member whose turn it is, under its
/// own policy (a `Block` member without room is owed it). Returns false if
/// no member could take it.
fn deliver_to_group(
    group: &QueueGroup<Target>,
    record: RecordRef,
    turn: usize,
    scope: Scope<'_>,
    (backlog, waking): (&mut Backlog, &mut Waking<'_>),
) -> bool {
    let members = &group.members;
    let first = turn % members.len();
    let mut record = record;
    let local = matches!(scope, Scope::Local);
    let passes: [fn(&Target) -> bool; 3] = [
        |m| !m.remote && !m.queue.signal.is_sleeping(),
        |m| !m.remote,
        |m| m.remote,
    ];
    for (pass, eligible) in passes.iter().enumerate() {
        if pass == 2 && !local {
            break;
        }
        for offset in 0..members.len() {
            let member = &members[(first + offset) % members.len()];
            if !eligible(member) {
                continue;
            }
            match member.try_deliver(record, backlog.lanes()) {
                Ok(()) => {
                    waking.delivered_to(member, backlog.lanes());
                    return true;
                }
                Err(rejected) => record = rejected,
            }
        }
    }
    // Every eligible member is full: the first eligible one in turn applies
    // its policy (counting the drop if it drops).
    let eligible = |m: &&Target| local || !m.remote;
    let Some(member) = (0..members.len())
        .map(|offset| &members[(first + offset) % members.len()])
        .find(eligible)
    else {
        return false;
    };
    match member.deliver(record, backlog.lanes()) {
        Outcome::Queued => {
            waking.delivered_to(member, backlog.lanes());
            true
        }
        Outcome::Full(record) => {
            backlog.owe(member, record, member.tag);
            true
        }
        Outcome::Dropped => false,
    }
}
