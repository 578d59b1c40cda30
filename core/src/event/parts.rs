//! `Archive` and `Serialize` for the borrowed [`EventParts`] and [`Header`],
//! written by hand so that they produce [`ArchivedEvent`] and [`ArchivedHeader`]
//! byte for byte as the owned types do. (rkyv's `#[rkyv(as = ...)]` derive
//! cannot normalize the `with` wrappers' associated types through a lifetime
//! parameter, so the derive is not an option here.)
//!
//! Field order in `serialize` follows the derive for [`Event`]: out-of-line data
//! is written field by field in declaration order, then the root. The property
//! test `parts_archive_to_the_same_bytes_as_the_owned_event` pins this.

use rkyv::munge::munge;
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::with::{ArchiveWith, AsString, Map, SerializeWith};
use rkyv::{Archive, Place, Serialize};

use super::{ArchivedEvent, ArchivedHeader, EventParts, Header};

/// What [`EventParts`] leaves behind after writing its out-of-line data.
#[allow(missing_debug_implementations)] // rkyv's resolvers have no Debug to forward to
pub struct EventPartsResolver {
    subject: StringResolver,
    reply_to: Option<StringResolver>,
    headers: VecResolver,
    payload: VecResolver,
}

impl Archive for EventParts<'_> {
    type Archived = ArchivedEvent;
    type Resolver = EventPartsResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        munge!(let ArchivedEvent { id, time_unix_nanos, subject, reply_to, headers, payload } = out);
        self.id.resolve((), id);
        self.time_unix_nanos.resolve((), time_unix_nanos);
        ArchivedString::resolve_from_str(self.subject, resolver.subject, subject);
        <Map<AsString> as ArchiveWith<Option<&str>>>::resolve_with(
            &self.reply_to,
            resolver.reply_to,
            reply_to,
        );
        ArchivedVec::resolve_from_slice(self.headers, resolver.headers, headers);
        ArchivedVec::resolve_from_slice(self.payload, resolver.payload, payload);
    }
}

impl<S> Serialize<S> for EventParts<'_>
where
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok(EventPartsResolver {
            subject: ArchivedString::serialize_from_str(self.subject, serializer)?,
            reply_to: <Map<AsString> as SerializeWith<Option<&str>, S>>::serialize_with(
                &self.reply_to,
                serializer,
            )?,
            headers: ArchivedVec::serialize_from_slice(self.headers, serializer)?,
            payload: ArchivedVec::serialize_from_slice(self.payload, serializer)?,
        })
    }
}

/// What [`Header`] leaves behind after writing its out-of-line data.
#[allow(missing_debug_implementations)] // rkyv's resolvers have no Debug to forward to
pub struct HeaderResolver {
    name: StringResolver,
    value: VecResolver,
}

impl Archive for Header<'_> {
    type Archived = ArchivedHeader;
    type Resolver = HeaderResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        munge!(let rkyv::tuple::ArchivedTuple2(name, value) = out);
        ArchivedString::resolve_from_str(self.0, resolver.name, name);
        ArchivedVec::resolve_from_slice(self.1, resolver.value, value);
    }
}

impl<S> Serialize<S> for Header<'_>
where
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok(HeaderResolver {
            name: ArchivedString::serialize_from_str(self.0, serializer)?,
            value: ArchivedVec::serialize_from_slice(self.1, serializer)?,
        })
    }
}
