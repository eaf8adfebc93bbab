//! The OpenAPI 3 document of `/v1`, generated from the handlers' annotations and the wire
//! types, served at `GET /v1/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Triad controller", description = "The cluster's API: nodes, networks, images, volumes and VMs."),
    modifiers(&BearerAuth, &CommonErrors),
    security(("bearer" = [])),
    paths(
        super::health,
        super::nodes::list, super::nodes::show, super::nodes::join, super::nodes::remove, super::nodes::act, super::nodes::rotate_certificate,
        super::nodes::maintenance,
        super::cluster::offerings, super::cluster::offering, super::cluster::create_offering, super::cluster::delete_offering,
        super::cluster::settings, super::cluster::patch_settings,
        super::cluster::tokens, super::cluster::create_token, super::cluster::delete_token,
        super::cluster::pools,
        super::cluster::groups, super::cluster::group, super::cluster::create_group, super::cluster::delete_group,
        super::cluster::list_events, super::cluster::audit, super::cluster::operation,
        super::cluster::backup,
        super::networks::list, super::networks::show, super::networks::create, super::networks::remove,
        super::networks::groups, super::networks::group, super::networks::create_group,
        super::networks::replace_group, super::networks::remove_group,
        super::images::list, super::images::show, super::images::create, super::images::remove,
        super::volumes::list, super::volumes::show, super::volumes::create, super::volumes::remove,
        super::volumes::attach, super::volumes::detach, super::volumes::grow,
        super::volumes::snapshot, super::volumes::rollback,
        super::vms::list, super::vms::show, super::vms::create, super::vms::destroy,
        super::vms::start, super::vms::stop, super::vms::reboot, super::vms::set_ha,
        super::vms::placement, super::vms::console,
        super::eips::list, super::eips::show, super::eips::create, super::eips::remove,
    ),
    tags(
        (name = "nodes"), (name = "vms"), (name = "networks"), (name = "images"), (name = "storage"),
        (name = "offerings"), (name = "affinity"), (name = "tokens"), (name = "events"), (name = "cluster"),
    )
)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The errors any operation may answer, on every operation that does not say them itself:
/// 401 and 403 (auth), 400 (malformed), 404, 405, 409, 422 and 503 (the store or a node).
#[derive(Debug)]
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                            "ErrorBody",
                        ))))
                        .build(),
                )
                .build()
        };
        let common = [
            ("400", "the request is malformed: `field` names what"),
            ("401", "no token, or one the controller does not know"),
            ("403", "a read-only token asked for a change"),
            ("404", "no such resource"),
            ("405", "the resource does not take that method"),
            ("409", "it conflicts with what exists"),
            ("422", "well formed, but impossible: `field` names why"),
            ("503", "the store or a node did not answer"),
        ];
        for (path, item) in openapi.paths.paths.iter_mut() {
            let public = path == "/v1/health" || path == "/v1/openapi.json";
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (code, description) in common {
                    if public && code != "503" {
                        continue;
                    }
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| RefOr::T(error(description)));
                }
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .schemas
            .entry("ErrorBody".to_owned())
            .or_insert_with(<triad_api::ErrorBody as utoipa::PartialSchema>::schema);
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
