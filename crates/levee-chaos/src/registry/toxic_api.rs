//! The toxic calls of the API: list, add, show, update, remove. Each
//! change is published to the proxy's open connections at once.

use std::sync::Arc;

use crate::error::ApiError;
use crate::toxic::{Kind, Stream, Toxic, ToxicJson, ToxicSet};

use super::{Entry, Inner, NewToxic, Registry, ToxicPatch, parse};

fn proxy<'a>(inner: &'a mut Inner, name: &str) -> Result<&'a mut Entry, ApiError> {
    inner.proxies.get_mut(name).ok_or_else(ApiError::proxy_not_found)
}

impl Registry {
    /// `GET /proxies/{proxy}/toxics`: upstream toxics first, each stream's
    /// in the order added, as Toxiproxy lists them.
    pub async fn toxics(&self, name: &str) -> Result<Vec<ToxicJson>, ApiError> {
        let mut inner = self.inner.lock().await;
        let set = ToxicSet::of(&proxy(&mut inner, name)?.toxics);
        Ok(set
            .upstream
            .iter()
            .chain(&set.downstream)
            .map(|t| t.to_json())
            .collect())
    }

    /// `GET /proxies/{proxy}/toxics/{toxic}`.
    pub async fn toxic(&self, name: &str, toxic: &str) -> Result<ToxicJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let entry = proxy(&mut inner, name)?;
        entry
            .toxic(toxic)
            .map(|t| t.to_json())
            .ok_or_else(ApiError::toxic_not_found)
    }

    /// `POST /proxies/{proxy}/toxics`. Defaults as Toxiproxy's: stream
    /// `downstream`, toxicity 1, name `<type>_<stream>`, attributes zero.
    /// The checks come in Toxiproxy's order, so the same bad body gets the
    /// same error.
    pub async fn add_toxic(&self, name: &str, body: &[u8]) -> Result<ToxicJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let id = inner.next_id;
        let entry = proxy(&mut inner, name)?;
        let new: NewToxic = parse(body)?;
        let label = new.stream.unwrap_or_else(|| "downstream".to_string());
        let stream = Stream::parse(&label).ok_or_else(ApiError::invalid_stream)?;
        let type_name = new.kind.unwrap_or_default();
        let toxic_name = match new.name {
            Some(n) if !n.is_empty() => n,
            _ => format!("{type_name}_{label}"),
        };
        if !Kind::TYPES.contains(&type_name.as_str()) {
            return Err(ApiError::invalid_toxic_type());
        }
        if entry.toxic(&toxic_name).is_some() {
            return Err(ApiError::toxic_exists());
        }
        let kind = Kind::parse(&type_name, &new.attributes)
            .map_err(ApiError::bad_body)?
            .ok_or_else(ApiError::invalid_toxic_type)?;
        let toxic = Arc::new(Toxic {
            id,
            revision: 0,
            name: toxic_name,
            kind,
            stream,
            stream_label: label,
            toxicity: new.toxicity.unwrap_or(1.0),
        });
        entry.toxics.push(Arc::clone(&toxic));
        entry.publish();
        inner.next_id += 1;
        Ok(toxic.to_json())
    }

    /// `POST`/`PATCH /proxies/{proxy}/toxics/{toxic}`: the attributes
    /// given replace the old ones, the rest stay; so does the toxicity
    /// unless given. Name, type and stream cannot change.
    pub async fn update_toxic(&self, name: &str, toxic: &str, body: &[u8]) -> Result<ToxicJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let entry = proxy(&mut inner, name)?;
        let at = entry
            .toxics
            .iter()
            .position(|t| t.name == toxic)
            .ok_or_else(ApiError::toxic_not_found)?;
        let patch: ToxicPatch = parse(body)?;
        let old = &entry.toxics[at];
        let updated = Toxic {
            revision: old.revision + 1,
            kind: old.kind.patched(&patch.attributes).map_err(ApiError::bad_body)?,
            toxicity: patch.toxicity.unwrap_or(old.toxicity),
            ..Toxic::clone(old)
        };
        let json = updated.to_json();
        entry.toxics[at] = Arc::new(updated);
        entry.publish();
        Ok(json)
    }

    /// `DELETE /proxies/{proxy}/toxics/{toxic}`.
    pub async fn remove_toxic(&self, name: &str, toxic: &str) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let entry = proxy(&mut inner, name)?;
        let before = entry.toxics.len();
        entry.toxics.retain(|t| t.name != toxic);
        if entry.toxics.len() == before {
            return Err(ApiError::toxic_not_found());
        }
        entry.publish();
        Ok(())
    }
}
