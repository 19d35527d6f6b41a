//! The arena's load-test bots (`zonescaler-arena bots`, `--game arena`): they walk their movement
//! scenario and play like a crowd of players would: hit whatever stands in reach now and then,
//! and step over to pickups they see nearby and take them.
//!
//! A brain sees only what the bot's client sees (its view of the world, decoded with the game's
//! own wire types) and acts only through client commands, exactly as a real client does, so a
//! swarm exercises the same paths players do: commands checked on the avatar's owner, damage
//! and claims routed to owners across borders, kills and awards coming back.

use crate::commands::{Attack, PickUp};
use crate::components::{Health, Kind, Taken};
use glam::Vec3;
use zonescaler_server::bots::{BotBrain, BrainCtx};
use zonescaler_shared::NetId;
use zonescaler_shared::quant::QPos;

/// How close an entity must be for a bot to swing at it (just inside the game's default reach).
pub const BOT_ATTACK_RANGE_M: f32 = 3.5;
/// How often a bot swings, at most.
pub const BOT_ATTACK_EVERY_US: u64 = 700_000;
/// How far a bot leaves its path for a pickup it sees.
pub const BOT_PICKUP_DETOUR_M: f32 = 12.0;
/// How close it must be to ask for the pickup (the game's default reach is 5 m).
pub const BOT_PICKUP_RANGE_M: f32 = 4.0;
/// How often a bot asks for a pickup, at most.
pub const BOT_PICKUP_EVERY_US: u64 = 400_000;

/// One arena bot's habits.
#[derive(Debug, Default)]
pub struct ArenaBot {
    next_attack_us: u64,
    next_pickup_us: u64,
}

impl ArenaBot {
    /// A bot's brain (the seed is the bot's: its own random stream comes with the context).
    pub fn new(_seed: u64) -> Self {
        Self::default()
    }
}

fn distance(a: QPos, b: Vec3) -> f32 {
    let p = a.to_vec3();
    ((p.x - b.x).powi(2) + (p.z - b.z).powi(2)).sqrt()
}

impl BotBrain for ArenaBot {
    fn think(&mut self, ctx: &mut BrainCtx<'_>) {
        let (Some(me), Some(at)) = (ctx.avatar(), ctx.position()) else {
            return;
        };
        let now = ctx.now_us();
        let mut target: Option<(f32, NetId)> = None;
        let mut pickup: Option<(f32, NetId, Vec3)> = None;
        if let Some(view) = ctx.view() {
            for (id, e) in view.iter().filter(|(id, _)| **id != me) {
                let d = distance(e.pos, at);
                match ctx.component::<Kind>(e) {
                    Some(Kind::Pickup)
                        if ctx.component::<Taken>(e).is_none()
                            && d <= BOT_PICKUP_DETOUR_M
                            && pickup.is_none_or(|p| d < p.0) =>
                    {
                        pickup = Some((d, *id, e.pos.to_vec3()));
                    }
                    Some(Kind::Npc | Kind::Player) => {
                        let alive = ctx.component::<Health>(e).is_some_and(|h| h.is_alive());
                        if alive && d <= BOT_ATTACK_RANGE_M && target.is_none_or(|t| d < t.0) {
                            target = Some((d, *id));
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some((_, id)) = target
            && now >= self.next_attack_us
            // Not every bot swings at every chance: a crowd, not a drill.
            && ctx.rng().chance(0.5)
        {
            ctx.send_command(&Attack { target: id });
            self.next_attack_us = now + BOT_ATTACK_EVERY_US;
        }
        if let Some((d, id, p)) = pickup {
            if d <= BOT_PICKUP_RANGE_M {
                if now >= self.next_pickup_us {
                    ctx.send_command(&PickUp { item: id });
                    self.next_pickup_us = now + BOT_PICKUP_EVERY_US;
                }
            } else {
                ctx.move_to(p);
            }
        }
    }
}
