//! Auto attendant (SPEC V4; the seeds' Call Director): per-tenant menus
//! of digit choices with prompts, business hours per weekday in a time
//! zone, holidays and after-hours menus; choices lead to a user's
//! extension, a mailbox, another menu, a queue (a number routed to a
//! contact-center plugin), a fixed outside number (through the dialing
//! policy) or goodbye; dial-by-extension; no-input and wrong keys asked
//! again, then a default. See `docs/attendant.md`.
//!
//! This file is the door: the router in `Attendant::handle` and the call
//! events' entry. One module per area, each importing only those below:
//!
//! | module | what |
//! |---|---|
//! | `phone` | the telephone side: menus, choices, putting callers through |
//! | `web` | the admin's side: attendants and prompts over HTTPS |
//! | `model` | what is stored; the checks a configuration passes |
//! | `hours` | which menu answers when, in the time zone |

mod hours;
mod model;
mod phone;
mod web;

use switchboard_sdk::calls::CallEvent;
use switchboard_sdk::http::{ApiError, Router};
use switchboard_sdk::{Plugin, Request, Response, tx};

struct AutoAttendant;

switchboard_sdk::export_plugin!(AutoAttendant);

impl Plugin for AutoAttendant {
    fn handle(request: Request) -> Response {
        let mut response = Router::new()
            .get("/admin/attendants", web::list)
            .get("/admin/attendants/:id", web::show)
            .put("/admin/attendants/:id", web::put)
            .delete("/admin/attendants/:id", web::delete)
            .get("/admin/attendants/:id/now", web::now)
            .get("/admin/prompts", web::prompts)
            .put("/admin/prompts/:name", web::upload)
            .delete("/admin/prompts/:name", web::delete_prompt)
            .handle(&request);
        tx::finish(&mut response);
        response
    }

    fn on_call(event: CallEvent) -> Result<(), String> {
        phone::on_call(event).map_err(|e| format!("{e:?}"))
    }
}

pub(crate) type Reply = Result<Response, ApiError>;
