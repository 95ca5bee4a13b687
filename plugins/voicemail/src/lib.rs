//! Voicemail (SPEC V1-V5): a mailbox per user with a PIN, four greetings,
//! messages left by callers whose call was diverted (busy, no answer,
//! always), listening by phone and over HTTPS, and message-waiting on the
//! owner's phones. See `docs/voicemail.md`.
//!
//! The plugin holds no `dial` grant: nothing in it can place a call, so
//! no caller can use a mailbox to call out (toll fraud). Every message
//! and greeting is a blob of this plugin owned by the mailbox's user
//! (their quota; shredded when deleted).
//!
//! This file is the door: the router in `Voicemail::handle`, the call
//! events' entry, and the two changes both doors make (`copy_message`,
//! `set_greeting`). One module per area, each importing only those below:
//!
//! | module | what |
//! |---|---|
//! | `phone` | the telephone side: deposit, sign-in, menus |
//! | `web` | the HTTPS side: a user's mailbox, the admin's settings |
//! | `pin` | PIN rules, keyed hash, lockout |
//! | `model` | what is stored, under which keys; counts, MWI, events |

mod model;
mod phone;
mod pin;
mod web;

use switchboard_sdk::calls::CallEvent;
use switchboard_sdk::http::{ApiError, Router};
use switchboard_sdk::{Error, Plugin, Request, Response, blobs, config, tx};

use model::{Folder, Greeting, GreetingKind, Message};

struct Voicemail;

switchboard_sdk::export_plugin!(Voicemail);

impl Plugin for Voicemail {
    fn handle(request: Request) -> Response {
        let mut response = Router::new()
            .get("/mailbox", web::mailbox)
            .put("/pin", web::set_pin)
            .get("/messages", web::list)
            .get("/messages/:id", web::show)
            .get("/messages/:id/audio", web::download)
            .post("/messages/:id/heard", web::heard)
            .post("/messages/:id/move", web::move_to)
            .post("/messages/:id/forward", web::forward)
            .delete("/messages/:id", web::delete)
            .get("/greetings/:kind/audio", web::greeting_audio)
            .put("/greetings/:kind", web::upload_greeting)
            .delete("/greetings/:kind", web::delete_greeting)
            .get("/admin/mailboxes", web::admin_list)
            .put("/admin/mailboxes/:user", web::admin_set)
            .post("/admin/mailboxes/:user/unlock", web::admin_unlock)
            .delete("/admin/mailboxes/:user/pin", web::admin_clear_pin)
            .handle(&request);
        tx::finish(&mut response);
        response
    }

    fn on_call(event: CallEvent) -> Result<(), String> {
        phone::on_call(event).map_err(|e| format!("{e:?}"))
    }
}

pub(crate) type Reply = Result<Response, ApiError>;

/// Copies `user`'s message `m` into `to`'s mailbox as a new, unheard
/// message forwarded by `user` (its audio copied into a blob `to` owns).
/// `QuotaExceeded` when `to`'s mailbox is full.
pub(crate) fn copy_message(user: &str, m: &Message, to: &str) -> Result<(), Error> {
    let max = config::get::<usize>("max-messages").unwrap_or(100);
    if model::messages(to)?.len() >= max {
        return Err(Error::QuotaExceeded("the mailbox is full".into()));
    }
    let audio = blobs::read_all(&m.blob)?;
    let blob = blobs::create(Some(to), model::MESSAGE_CLASS)?;
    if let Err(e) = blobs::append(&blob, &audio) {
        // Over `to`'s quota: no empty copy is left behind.
        let _ = blobs::delete(&blob);
        return Err(e);
    }
    let copy = Message {
        id: model::new_id(),
        blob,
        folder: Folder::New,
        heard: false,
        forwarded_by: Some(user.to_string()),
        ..m.clone()
    };
    model::deliver(to, &copy)?;
    Ok(())
}

/// Sets (or with `None` removes) `user`'s greeting `kind`, shredding the
/// one it replaces.
pub(crate) fn set_greeting(
    user: &str,
    kind: GreetingKind,
    greeting: Option<Greeting>,
) -> Result<(), Error> {
    let mut mailbox = model::mailbox(user)?;
    let slot = mailbox.greetings.slot(kind);
    if let Some(old) = slot.take() {
        // A legal hold keeps the old audio (retention takes it later).
        match blobs::delete(&old.blob) {
            Ok(_) | Err(Error::NotFound(_) | Error::Denied(_)) => {}
            Err(e) => return Err(e),
        }
    }
    *slot = greeting;
    model::save_mailbox(user, &mailbox)
}
