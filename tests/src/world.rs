//! The cast most plugin tests play with, over the real HTTPS API: acme's
//! alice, bob and carol (users) and boss (tenant admin), and globex's
//! gina, each signed in. Built on a harness the test prepares (usually
//! with [`crate::two_tenants`]); the fields are public so tests name
//! people as `w.alice.1` (the token) or `w.alice.0` (the id).

use switchboard::harness::Harness;

use crate::accounts::people;
use crate::http::Server;

/// A harness, its server and the cast.
pub struct World {
    pub h: Harness,
    pub s: Server,
    /// (id, token) of acme's alice, bob, carol and boss (tenant admin),
    /// and globex's gina.
    pub alice: (String, String),
    pub bob: (String, String),
    pub carol: (String, String),
    pub admin: (String, String),
    pub gina: (String, String),
    /// The background loops, stopped with the world.
    pub scheduler: switchboard::scheduler::Scheduler,
}

impl World {
    /// Starts the background work (timers, sweeps) and a server over `h`,
    /// then creates and signs in the cast.
    pub async fn start(h: Harness) -> World {
        let scheduler = switchboard::scheduler::Scheduler::start(h.runtime(), Default::default());
        let s = Server::start(h.runtime().clone()).await;
        let mut u = people(
            &h,
            &s,
            &[
                ("acme", "alice", "user"),
                ("acme", "bob", "user"),
                ("acme", "carol", "user"),
                ("acme", "boss", "tenant-admin"),
                ("globex", "gina", "user"),
            ],
        )
        .await
        .into_iter();
        World {
            scheduler,
            alice: u.next().unwrap(),
            bob: u.next().unwrap(),
            carol: u.next().unwrap(),
            admin: u.next().unwrap(),
            gina: u.next().unwrap(),
            h,
            s,
        }
    }
}
