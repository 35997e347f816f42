//! The route table (the single source the OpenAPI sync test checks against) and dispatch.

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::error::ApiError;
use crate::http::Body;
use crate::state::{AppState, Ctx};

mod auth;
pub mod system;
mod tasks;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Register,
    Login,
    Refresh,
    Logout,
    Jwks,
    Me,
    Tasks,
    Task,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
}

/// One path template, the methods it answers and its handler family.
pub struct RouteDef {
    pub path: &'static str,
    pub methods: &'static [Method],
    route: Route,
}

const fn def(path: &'static str, methods: &'static [Method], route: Route) -> RouteDef {
    RouteDef {
        path,
        methods,
        route,
    }
}

/// Every route the API serves. Paths use matchit's `{param}` syntax, as OpenAPI does.
pub const ROUTES: &[RouteDef] = &[
    def("/auth/register", &[Method::POST], Route::Register),
    def("/auth/login", &[Method::POST], Route::Login),
    def("/auth/refresh", &[Method::POST], Route::Refresh),
    def("/auth/logout", &[Method::POST], Route::Logout),
    def("/.well-known/jwks.json", &[Method::GET], Route::Jwks),
    def("/api/me", &[Method::GET], Route::Me),
    def(
        "/api/users/{user_id}/tasks",
        &[Method::GET, Method::POST],
        Route::Tasks,
    ),
    def(
        "/api/users/{user_id}/tasks/{task_id}",
        &[Method::GET, Method::PATCH, Method::DELETE],
        Route::Task,
    ),
    def("/healthz", &[Method::GET], Route::Healthz),
    def("/readyz", &[Method::GET], Route::Readyz),
    def("/metrics", &[Method::GET], Route::Metrics),
    def("/openapi.json", &[Method::GET], Route::OpenApi),
];

pub type Router = matchit::Router<usize>;

pub fn router() -> Result<Router, matchit::InsertError> {
    let mut r = Router::new();
    for (i, d) in ROUTES.iter().enumerate() {
        r.insert(d.path, i)?;
    }
    Ok(r)
}

/// Finds the route, checks the method, and runs the handler.
pub async fn dispatch(
    state: &AppState,
    router: &Router,
    req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<Body>, ApiError> {
    let (index, user_id, task_id) = {
        let matched = router
            .at(req.uri().path())
            .map_err(|_| ApiError::NotFound)?;
        let p = |name| {
            matched
                .params
                .get(name)
                .map(str::to_owned)
                .unwrap_or_default()
        };
        (*matched.value, p("user_id"), p("task_id"))
    };
    let route = &ROUTES[index];
    ctx.route = route.path;
    if !route.methods.contains(req.method()) {
        return Err(ApiError::MethodNotAllowed(route.methods));
    }
    let method = req.method().clone();
    match route.route {
        Route::Register => auth::register(state, req, ctx).await,
        Route::Login => auth::login(state, req, ctx).await,
        Route::Refresh => auth::refresh(state, req, ctx).await,
        Route::Logout => auth::logout(state, req, ctx).await,
        Route::Jwks => Ok(system::jwks(state)),
        Route::Me => system::me(state, req, ctx).await,
        Route::Tasks if method == Method::GET => tasks::list(state, req, ctx, &user_id).await,
        Route::Tasks => tasks::create(state, req, ctx, &user_id).await,
        Route::Task => match method {
            Method::GET => tasks::get(state, req, ctx, &user_id, &task_id).await,
            Method::PATCH => tasks::update(state, req, ctx, &user_id, &task_id).await,
            _ => tasks::delete(state, req, ctx, &user_id, &task_id).await,
        },
        Route::Healthz => system::healthz(),
        Route::Readyz => system::readyz(state).await,
        Route::Metrics if state.settings.server.metrics => Ok(system::metrics(state).await),
        Route::Metrics => Err(ApiError::NotFound),
        Route::OpenApi => Ok(system::openapi()),
    }
}
