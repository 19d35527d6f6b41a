//! Forming a cluster, as a state machine: link events in, actions out. No I/O, no clock of its
//! own: the runtime drives it over QUIC links, the simulator over its seeded network.
//!
//! The master (shard 0, `--expect-shards N`) accepts joins on its link endpoint until N shards
//! are members, places the cells, and pushes the map to everyone. A joiner (`--join ADDR`) dials
//! the master, sends `Join`, gets its id and then the map; it then dials every member with a
//! smaller id other than the master (sending `Peer` so the acceptor knows who it is) and waits
//! for every member with a larger id to dial it, so every pair of shards has exactly one link.
//! Nothing ticks until all links are up, so no shard message is ever sent to a neighbour without
//! a link. Any link message that arrives early is kept for the first tick, in order.

use super::master::Master;
use std::collections::BTreeMap;
use zonescaler_net::link::LinkId;
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::{CellGrid, CellMap, Epoch};
use zonescaler_shared::protocol::{
    JoinRequest, LinkMessage, MapPush, MasterNotice, MemberInfo, ShardLoad,
};

/// What happened on the links (the driver's `LinkEvent`s, decoded).
// A handful of these while a cluster forms: a boxed message would cost more to read than it saves.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum FormEvent {
    Up(LinkId),
    /// A dial that never came up.
    Failed(LinkId, String),
    /// A link that was up went down.
    Down(LinkId, String),
    Message(LinkId, LinkMessage),
}

/// What the driver must do.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum FormAction {
    Send(LinkId, LinkMessage),
    /// Dial `addr` (a member's link address) and report the new link with [`Forming::dialed`].
    Dial(ShardId, String),
    Close(LinkId, String),
    /// A line for the operator.
    Say(String),
}

/// Why forming failed (the process cannot become a member).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("cannot join the cluster: {0}")]
    CannotJoin(String),
    #[error("the master closed the link: {0}")]
    MasterLeft(String),
    #[error("shard {0} left while the cluster formed: {1}")]
    MemberLeft(u16, String),
    #[error("cannot link to shard {0}: {1}")]
    CannotLink(u16, String),
    #[error("the master sent the map before an id")]
    MapBeforeId,
    #[error("the master's cell map does not fit this world config (same --world everywhere?): {0}")]
    BadMap(String),
    #[error("the shard dialled does not hold the master role; the master's links are at {0}")]
    NotMaster(String),
    #[error("cannot place the cells: {0}")]
    Placement(String),
}

/// A formed cluster, seen from this process.
#[derive(Debug)]
pub struct Formed {
    pub me: ShardId,
    pub map: CellMap,
    pub members: Vec<MemberInfo>,
    /// The member holding the master role.
    pub master_id: ShardId,
    /// The link to each other member.
    pub link_of: BTreeMap<ShardId, LinkId>,
    /// The master's state, on the master only.
    pub master: Option<Master>,
    /// Link messages that arrived before the first tick, in order.
    pub early: Vec<(ShardId, LinkMessage)>,
}

#[derive(Debug)]
enum State {
    /// The master, admitting joins.
    Gathering(Master),
    /// A joiner, waiting for its id and the map.
    Joining {
        master_link: Option<LinkId>,
        id: Option<ShardId>,
        /// The member holding the master role (its `Joined` says which).
        master: ShardId,
    },
    /// Everyone, linking every pair once the map is known.
    Linking {
        me: ShardId,
        map: CellMap,
        members: Vec<MemberInfo>,
        master: Option<Master>,
        master_id: ShardId,
    },
    Done,
}

/// One process forming its cluster.
#[derive(Debug)]
pub struct Forming {
    grid: CellGrid,
    me: JoinRequest,
    state: State,
    link_of: BTreeMap<ShardId, LinkId>,
    pending_dials: BTreeMap<LinkId, ShardId>,
    early: Vec<(ShardId, LinkMessage)>,
    /// Whether the "linked" line was said.
    announced: bool,
}

impl Forming {
    /// The master of a new cluster of `expect` shards (itself included).
    pub fn master(
        grid: CellGrid,
        me: JoinRequest,
        expect: usize,
        master: impl FnOnce(Master) -> Master,
        now_ms: u64,
    ) -> (Self, Vec<FormAction>) {
        let info = MemberInfo {
            id: ShardId(0),
            client_addr: me.client_addr.clone(),
            link_addr: me.link_addr.clone(),
            metrics_addr: me.metrics_addr.clone(),
            http_addr: me.http_addr.clone(),
            weight: me.weight,
        };
        let m = master(Master::new(grid, expect, info, now_ms));
        let mut f = Self::new(grid, me, State::Gathering(m));
        let mut out = vec![FormAction::Say(format!(
            "master waiting for {} more shard(s) to join at {}",
            expect.saturating_sub(1),
            f.me.link_addr
        ))];
        // A cluster of one is placed at once.
        if let Err(e) = f.place_if_ready(&mut out, now_ms) {
            out.push(FormAction::Say(e.to_string()));
        }
        f.announce(&mut out);
        (f, out)
    }

    /// A shard joining the cluster whose master's links are at `master_addr`.
    pub fn joiner(grid: CellGrid, me: JoinRequest, master_addr: String) -> (Self, Vec<FormAction>) {
        let f = Self::new(
            grid,
            me,
            State::Joining {
                master_link: None,
                id: None,
                master: ShardId(0),
            },
        );
        (f, vec![FormAction::Dial(ShardId(0), master_addr)])
    }

    fn new(grid: CellGrid, me: JoinRequest, state: State) -> Self {
        Self {
            grid,
            me,
            state,
            link_of: BTreeMap::new(),
            pending_dials: BTreeMap::new(),
            early: Vec::new(),
            announced: false,
        }
    }

    /// Once every link is up: say so, once.
    fn announce(&mut self, out: &mut Vec<FormAction>) {
        if self.announced || !self.is_formed() {
            return;
        }
        self.announced = true;
        if let State::Linking {
            me, map, members, ..
        } = &self.state
        {
            out.push(FormAction::Say(format!(
                "shard {} of {} linked; {} cells at epoch {}",
                me.0,
                members.len(),
                map.cells_of(*me).count(),
                map.epoch()
            )));
        }
    }

    /// The driver dialed `shard` as `link` (after a [`FormAction::Dial`]).
    pub fn dialed(&mut self, shard: ShardId, link: LinkId) {
        match &mut self.state {
            State::Joining { master_link, .. } if shard == ShardId(0) => *master_link = Some(link),
            _ => {
                self.pending_dials.insert(link, shard);
            }
        }
    }

    /// This process's shard id, once the master gave it one.
    pub fn id(&self) -> Option<ShardId> {
        match &self.state {
            State::Gathering(_) => Some(ShardId(0)),
            State::Joining { id, .. } => *id,
            State::Linking { me, .. } => Some(*me),
            State::Done => None,
        }
    }

    /// Whether the cluster has formed: take it with [`Self::finish`].
    pub fn is_formed(&self) -> bool {
        matches!(self.state, State::Linking { .. }) && self.all_linked()
    }

    fn all_linked(&self) -> bool {
        match &self.state {
            State::Linking { members, .. } => self.link_of.len() >= members.len() - 1,
            _ => false,
        }
    }

    /// The formed cluster (once [`Self::is_formed`]).
    pub fn finish(mut self, now_ms: u64) -> Option<Formed> {
        if !self.is_formed() {
            return None;
        }
        let State::Linking {
            me,
            map,
            members,
            mut master,
            master_id,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return None;
        };
        if let Some(m) = master.as_mut() {
            m.heartbeat(me, ShardLoad::default(), now_ms);
        }
        Some(Formed {
            me,
            map,
            members,
            master_id,
            link_of: self.link_of,
            master,
            early: self.early,
        })
    }

    /// One link event; the actions it calls for.
    pub fn on_event(&mut self, ev: FormEvent, now_ms: u64) -> Result<Vec<FormAction>, FormError> {
        let mut out = Vec::new();
        match &self.state {
            State::Gathering(_) => self.gather(ev, &mut out, now_ms)?,
            State::Joining { .. } => self.join(ev, &mut out)?,
            State::Linking { .. } => self.link(ev, &mut out)?,
            State::Done => {}
        }
        self.announce(&mut out);
        Ok(out)
    }

    fn gather(
        &mut self,
        ev: FormEvent,
        out: &mut Vec<FormAction>,
        now_ms: u64,
    ) -> Result<(), FormError> {
        let State::Gathering(master) = &mut self.state else {
            return Ok(());
        };
        match ev {
            FormEvent::Message(link, LinkMessage::Join(req)) => match master.join(req, now_ms) {
                Ok(id) => {
                    out.push(FormAction::Say(format!("shard {} joined", id.0)));
                    self.link_of.insert(id, link);
                    let master = ShardId(0);
                    out.push(FormAction::Send(link, LinkMessage::Joined { id, master }));
                }
                Err(e) => {
                    out.push(FormAction::Say(format!("join refused: {e}")));
                    out.push(FormAction::Close(link, e.to_string()));
                }
            },
            FormEvent::Message(..) => {}
            FormEvent::Down(link, reason) => {
                if let Some((id, _)) = self.link_of.iter().find(|(_, l)| **l == link) {
                    return Err(FormError::MemberLeft(id.0, reason));
                }
            }
            FormEvent::Up(_) | FormEvent::Failed(..) => {}
        }
        self.place_if_ready(out, now_ms)
    }

    /// On the master: once every expected shard joined, place the cells and push the map.
    fn place_if_ready(&mut self, out: &mut Vec<FormAction>, now_ms: u64) -> Result<(), FormError> {
        let State::Gathering(master) = &mut self.state else {
            return Ok(());
        };
        if !master.ready_to_place() {
            return Ok(());
        }
        let push = master
            .place()
            .map_err(|e| FormError::Placement(e.to_string()))?;
        for link in self.link_of.values() {
            out.push(FormAction::Send(*link, LinkMessage::Map(push.clone())));
        }
        let State::Gathering(master) = std::mem::replace(&mut self.state, State::Done) else {
            return Ok(());
        };
        self.enter_linking(ShardId(0), push, Some(master), ShardId(0), out)?;
        let _ = now_ms;
        Ok(())
    }

    fn join(&mut self, ev: FormEvent, out: &mut Vec<FormAction>) -> Result<(), FormError> {
        let State::Joining {
            master_link,
            id,
            master,
        } = &mut self.state
        else {
            return Ok(());
        };
        let is_master = |l: LinkId| *master_link == Some(l);
        match ev {
            FormEvent::Up(l) if is_master(l) => {
                out.push(FormAction::Send(l, LinkMessage::Join(self.me.clone())));
            }
            FormEvent::Failed(l, reason) if is_master(l) => {
                return Err(FormError::CannotJoin(reason));
            }
            FormEvent::Down(l, reason) if is_master(l) => {
                return Err(FormError::MasterLeft(reason));
            }
            FormEvent::Message(l, msg) if is_master(l) => match msg {
                LinkMessage::Joined {
                    id: given,
                    master: m,
                } => {
                    *id = Some(given);
                    *master = m;
                }
                LinkMessage::NotMaster { master } => return Err(FormError::NotMaster(master)),
                LinkMessage::Map(push) => {
                    let me = id.ok_or(FormError::MapBeforeId)?;
                    let master = *master;
                    self.link_of.insert(master, l);
                    self.state = State::Done;
                    // The shard app takes this push again as its first notice, as it takes every
                    // later one: its members and its dead are then known from the first tick. A
                    // joiner that replaces a dead member (`up` restarting it at its address)
                    // arrives in the very push that names the death, and the adopter promotes the
                    // dead member's replica only once every live member said what it took from it
                    // (`ShardMessage::Taken`): without this the joiner said so (nothing) only with
                    // its next push, a balancing round later, and resumes that reached the
                    // adopter meanwhile found no avatar (`.ci/chaos.sh`: 136 of 141 failed).
                    let notice = LinkMessage::FromMaster(MasterNotice::Map(push.clone()));
                    self.early.push((master, notice));
                    self.enter_linking(me, push, None, master, out)?;
                }
                other => self.early.push((*master, other)),
            },
            _ => {}
        }
        Ok(())
    }

    /// The map is known: dial the members with smaller ids (the master is linked already),
    /// wait for the larger ones.
    fn enter_linking(
        &mut self,
        me: ShardId,
        push: MapPush,
        master: Option<Master>,
        master_id: ShardId,
        out: &mut Vec<FormAction>,
    ) -> Result<(), FormError> {
        let MapPush {
            epoch,
            leaves,
            members,
            ..
        } = push;
        let map = CellMap::from_leaves(self.grid, Epoch(epoch), leaves.into_iter().collect())
            .map_err(|e| FormError::BadMap(e.to_string()))?;
        for m in &members {
            if m.id != me && m.id != master_id && m.id < me {
                out.push(FormAction::Dial(m.id, m.link_addr.clone()));
            }
        }
        self.state = State::Linking {
            me,
            map,
            members,
            master,
            master_id,
        };
        Ok(())
    }

    fn link(&mut self, ev: FormEvent, out: &mut Vec<FormAction>) -> Result<(), FormError> {
        let State::Linking { me, members, .. } = &self.state else {
            return Ok(());
        };
        let me = *me;
        match ev {
            FormEvent::Up(link) => {
                if let Some(id) = self.pending_dials.remove(&link) {
                    out.push(FormAction::Send(link, LinkMessage::Peer { id: me }));
                    self.link_of.insert(id, link);
                }
            }
            FormEvent::Failed(link, reason) => {
                if let Some(id) = self.pending_dials.get(&link) {
                    return Err(FormError::CannotLink(id.0, reason));
                }
            }
            FormEvent::Message(link, msg) => {
                let from = self
                    .link_of
                    .iter()
                    .find(|(_, l)| **l == link)
                    .map(|(id, _)| *id);
                match (msg, from) {
                    (LinkMessage::Peer { id }, None)
                        if members.iter().any(|m| m.id == id && m.id > me) =>
                    {
                        self.link_of.insert(id, link);
                    }
                    (other, Some(from)) => self.early.push((from, other)),
                    (_, None) => {}
                }
            }
            FormEvent::Down(link, reason) => {
                if let Some((id, _)) = self.link_of.iter().find(|(_, l)| **l == link) {
                    return Err(FormError::MemberLeft(id.0, reason));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::config::WorldConfig;

    fn req(i: u16) -> JoinRequest {
        JoinRequest {
            client_addr: format!("c{i}"),
            link_addr: format!("l{i}"),
            metrics_addr: String::new(),
            http_addr: String::new(),
            weight: 1,
        }
    }

    /// Three processes form a cluster over a perfect, instant network the test plays itself:
    /// every pair ends with exactly one link and the same map.
    #[test]
    fn three_shards_form_with_one_link_per_pair() {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let (master, mut q0) = Forming::master(grid, req(0), 3, |m| m, 0);
        let (j1, q1) = Forming::joiner(grid, req(1), "l0".into());
        let (j2, q2) = Forming::joiner(grid, req(2), "l0".into());
        let mut procs = [master, j1, j2];
        let mut queues = [std::mem::take(&mut q0), q1, q2];
        // Links: id → (process a, process b).
        let mut links: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
        let mut next = 0u64;
        let addr_of = |a: &str| a[1..].parse::<usize>().expect("l{i}");
        for _round in 0..20 {
            let mut events: Vec<(usize, FormEvent)> = Vec::new();
            for (p, q) in queues.iter_mut().enumerate() {
                for action in q.drain(..) {
                    match action {
                        FormAction::Dial(shard, addr) => {
                            next += 1;
                            let to = addr_of(&addr);
                            links.insert(next, (p, to));
                            procs[p].dialed(shard, LinkId(next));
                            events.push((p, FormEvent::Up(LinkId(next))));
                            events.push((to, FormEvent::Up(LinkId(next))));
                        }
                        FormAction::Send(l, msg) => {
                            let (a, b) = links[&l.0];
                            let to = if a == p { b } else { a };
                            events.push((to, FormEvent::Message(l, msg)));
                        }
                        FormAction::Close(..) => panic!("nobody is refused here"),
                        FormAction::Say(_) => {}
                    }
                }
            }
            for (p, ev) in events {
                let acts = procs[p].on_event(ev, 0).expect("forms");
                queues[p].extend(acts);
            }
        }
        let formed: Vec<Formed> = procs
            .into_iter()
            .map(|f| f.finish(0).expect("every process formed"))
            .collect();
        assert_eq!(links.len(), 3, "one link per pair of three shards");
        for (i, f) in formed.iter().enumerate() {
            assert_eq!(f.me, ShardId(i as u16));
            assert_eq!(f.link_of.len(), 2);
            assert_eq!(f.map, formed[0].map, "everyone has the master's map");
        }
        assert!(formed[0].master.is_some() && formed[1].master.is_none());
    }

    /// A joiner's shard app takes the map it formed with as its first master notice, so it
    /// settles the dead members that push names from its first tick (it owes their adopters the
    /// list of what it took from them: nothing).
    #[test]
    fn a_joiner_hands_its_first_map_to_its_app_with_the_dead_it_names() {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let (mut j, _) = Forming::joiner(grid, req(3), "l0".into());
        j.dialed(ShardId(0), LinkId(1));
        j.on_event(FormEvent::Up(LinkId(1)), 0).expect("up");
        let joined = LinkMessage::Joined {
            id: ShardId(3),
            master: ShardId(0),
        };
        j.on_event(FormEvent::Message(LinkId(1), joined), 0)
            .expect("an id");
        let member = |i: u16| MemberInfo {
            id: ShardId(i),
            client_addr: format!("c{i}"),
            link_addr: format!("l{i}"),
            metrics_addr: String::new(),
            http_addr: String::new(),
            weight: 1,
        };
        let map = CellMap::single(grid, ShardId(0));
        let push = MapPush {
            epoch: 7,
            leaves: map.leaves().iter().map(|(c, s)| (*c, *s)).collect(),
            members: vec![member(0), member(3)],
            dead: vec![(ShardId(1), Some(ShardId(0)))],
        };
        j.on_event(
            FormEvent::Message(LinkId(1), LinkMessage::Map(push.clone())),
            0,
        )
        .expect("the map");
        let formed = j
            .finish(0)
            .expect("linked to the master, the only other member");
        assert_eq!(
            formed.early,
            vec![(ShardId(0), LinkMessage::FromMaster(MasterNotice::Map(push)))],
            "the push, dead members and all, is the app's first notice"
        );
    }

    #[test]
    fn a_joiner_that_cannot_reach_the_master_fails_with_the_reason() {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let (mut j, acts) = Forming::joiner(grid, req(1), "l0".into());
        assert_eq!(acts, vec![FormAction::Dial(ShardId(0), "l0".into())]);
        j.dialed(ShardId(0), LinkId(9));
        let err = j
            .on_event(FormEvent::Failed(LinkId(9), "not a member".into()), 0)
            .expect_err("fails");
        assert_eq!(err, FormError::CannotJoin("not a member".into()));
    }
}
