//! Step 5 for a request a rule put in a rate-limit class: it counts against the class's
//! per-key limits (`<key>@<class>`) and the class's own limits (`@<class>`) instead of its
//! key's, with the model and gateway limits as usual. Same 429s and `x-ratelimit-*` headers
//! (those of the key's share of the class); the messages name the class.

use std::time::Instant;

use super::ctx::RequestCtx;
use crate::config::model::RateLimitClass;
use crate::config::Route;
use crate::ratelimit::class::{key_in_class, whole_class};
use crate::ratelimit::{AdmissionRequest, GlobalLimits, ModelLimits, RateLimited, Reservation};
use crate::state::AppState;

/// What a request holds against the limits.
#[derive(Default)]
pub struct Reserved {
    /// Its key's (or, in a class, the key's share of the class), model and gateway buckets.
    pub main: Option<Reservation>,
    /// The class's own buckets.
    pub class: Option<Reservation>,
}

/// The request's class, when a rule named one (validated at load, so it exists).
pub fn of(ctx: &RequestCtx) -> Option<(&str, &RateLimitClass)> {
    let name = ctx.admission.rules.rate_limit_class.as_deref()?;
    ctx.config
        .rate_limit_classes
        .get(name)
        .map(|class| (name, class))
}

pub fn admit(
    state: &AppState,
    ctx: &RequestCtx,
    (name, class): (&str, &RateLimitClass),
    route: &Route,
    estimated_tokens: u64,
) -> Result<Reserved, Box<RateLimited>> {
    let now = Instant::now();
    let whole = whole_class(name);
    let class_request = AdmissionRequest {
        key_name: &whole,
        key_limits: &class.class,
        model: "-",
        model_limits: &ModelLimits::default(),
        global_limits: &GlobalLimits::default(),
        estimated_tokens,
    };
    let mut class_part = (!class.class.is_empty())
        .then(|| state.limiter.admit(&class_request, now))
        .transpose()?;
    let own = key_in_class(ctx.key_label(), name);
    let request = AdmissionRequest {
        key_name: &own,
        key_limits: &class.per_key,
        model: &route.alias,
        model_limits: &route.limits,
        global_limits: &ctx.config.global_limits,
        estimated_tokens,
    };
    let main = state.limiter.admit(&request, now).inspect_err(|_| {
        if let Some(part) = class_part.take() {
            part.roll_back(now);
        }
    });
    let main = main?;
    Ok(Reserved {
        main: Some(main),
        class: class_part,
    })
}
