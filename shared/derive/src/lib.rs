//! `#[derive(Event)]` for distributed-events: implements `Event` for a serde type so that
//! it can travel as a domain event. Use it through `distributed_events_shared::Event`
//! (or the client or server crate, which re-export it).

use proc_macro::TokenStream;
use proc_macro2::Span;
use proc_macro_crate::{crate_name, FoundCrate};
use quote::quote;
use syn::{parse_macro_input, DeriveInput, Ident, LitStr};

/// Implements `Event` for a struct or enum. The wire name defaults to the type's name;
/// `#[event(name = "orders.purchased")]` sets it explicitly.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let mut name = input.ident.to_string();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let value: LitStr = meta.value()?.parse()?;
                if value.value().is_empty() {
                    return Err(meta.error("the event name must not be empty"));
                }
                name = value.value();
                Ok(())
            } else {
                Err(meta.error("unknown `event` option; expected `name = \"...\"`"))
            }
        })?;
    }
    let krate = shared_crate_path();
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics #krate::Event for #ident #ty_generics #where_clause {
            const EVENT_TYPE: &'static str = #name;
        }
    })
}

/// The path under which the app sees the shared crate: directly, or re-exported by the
/// client or server crate, whichever the app depends on.
fn shared_crate_path() -> proc_macro2::TokenStream {
    // A crate that derives `Event` for itself names itself with `extern crate self as ...`.
    for candidate in [
        "distributed-events-shared",
        "distributed-events-client",
        "distributed-events-server",
    ] {
        let name = match crate_name(candidate) {
            Ok(FoundCrate::Itself) => candidate.replace('-', "_"),
            Ok(FoundCrate::Name(found)) => found,
            Err(_) => continue,
        };
        let ident = Ident::new(&name, Span::call_site());
        return quote!(::#ident);
    }
    quote!(::distributed_events_shared)
}
