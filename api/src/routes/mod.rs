//! Routers by area; each exposes `router()` and keeps its handlers thin:
//! extract, call one operation, shape the answer.

pub mod admin_keys;
pub mod events;
pub mod health;
pub mod jobs;
pub mod keys;
pub mod management;
pub mod monitoring;
pub mod namespaces;
pub mod permissions;
pub mod schedules;
pub mod sessions;
pub mod tenant_limits;

/// The minimum role of every public route, collected from the declarations
/// next to the handlers. The middleware and the role-matrix test read it.
pub mod policy {
    use cache_shared::api_keys::Role;

    pub use crate::auth::policy::{Rule, required_role};

    /// Each module's declarations (a module with public routes adds its
    /// `ROLES` here; a route left out needs an operator).
    const PARTS: &[&[Rule]] = &[
        super::keys::ROLES,
        super::jobs::ROLES,
        super::health::ROLES,
        super::monitoring::ROLES,
        super::management::ROLES,
        super::namespaces::ROLES,
        super::events::ROLES,
        super::schedules::ROLES,
        super::admin_keys::ROLES,
        super::tenant_limits::ROLES,
    ];

    const COUNT: usize = count(PARTS);
    const TABLE: [Rule; COUNT] = concat(PARTS);

    /// `(method, route as registered, minimum role)` of every public route.
    pub const ROUTES: &[Rule] = &TABLE;

    const fn count(parts: &[&[Rule]]) -> usize {
        let mut total = 0;
        let mut i = 0;
        while i < parts.len() {
            total += parts[i].len();
            i += 1;
        }
        total
    }

    const fn concat<const N: usize>(parts: &[&[Rule]]) -> [Rule; N] {
        let mut table: [Rule; N] = [("", "", Role::Operator); N];
        let (mut i, mut n) = (0, 0);
        while i < parts.len() {
            let mut j = 0;
            while j < parts[i].len() {
                table[n] = parts[i][j];
                n += 1;
                j += 1;
            }
            i += 1;
        }
        table
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use axum::http::Method;

        #[test]
        fn unlisted_routes_fail_closed() {
            assert_eq!(
                required_role(ROUTES, &Method::GET, "/api/v1/unknown"),
                Role::Operator
            );
            assert_eq!(
                required_role(ROUTES, &Method::GET, "/api/v1/cache/keys/{key}"),
                Role::Reader
            );
        }

        #[test]
        fn every_route_is_declared_once() {
            for (i, (m, r, _)) in ROUTES.iter().enumerate() {
                let twice = ROUTES[i + 1..].iter().any(|(m2, r2, _)| m == m2 && r == r2);
                assert!(!twice, "{m} {r} declared twice");
            }
        }
    }
}
