//! Typed views over libvirt XML documents.
//!
//! Each definition wraps an [`xmltree::Element`], so elements and attributes
//! the accessors don't know about round-trip untouched. Callers outside the
//! hypervisor module use the accessors and never see XML strings, except to
//! store or log them.

mod devices;
mod direct_boot;
mod domain;
mod network;
mod snapshot;

pub use devices::{Disk, Interface};
pub use direct_boot::{DirectBootSpec, NicSpec};
pub use domain::{DomainDef, FenceStamp, ENVCLONE_XMLNS};
pub use network::{NetworkDef, NetworkSpec};
pub(crate) use snapshot::external_snapshot_xml;

use xmltree::{Element, EmitterConfig, XMLNode};

use super::HvError;

/// Parses `xml` and checks that its root element is `root`.
pub(crate) fn parse_root(xml: &str, root: &str, what: &'static str) -> Result<Element, HvError> {
    let el = Element::parse(xml.as_bytes()).map_err(|e| HvError::Xml { what, detail: e.to_string() })?;
    if el.name != root {
        return Err(HvError::Xml { what, detail: format!("root element is <{}>, expected <{root}>", el.name) });
    }
    Ok(el)
}

/// Serializes without an XML declaration, indented like libvirt does.
pub(crate) fn write(el: &Element) -> String {
    let mut out = Vec::new();
    let config = EmitterConfig::new().write_document_declaration(false).perform_indent(true).indent_string("  ");
    // Writing into a Vec can't fail on I/O; the emitter only fails on
    // malformed trees, which the typed edits never build.
    if let Err(e) = el.write_with_config(&mut out, config) {
        tracing::error!(error = %e, "cannot serialize XML element {}", el.name);
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn attr<'a>(el: &'a Element, key: &str) -> Option<&'a str> {
    el.attributes.get(key).map(String::as_str)
}

pub(crate) fn set_attr(el: &mut Element, key: &str, value: &str) {
    el.attributes.insert(key.to_owned(), value.to_owned());
}

pub(crate) fn children<'a>(el: &'a Element, name: &'a str) -> impl Iterator<Item = &'a Element> {
    el.children.iter().filter_map(XMLNode::as_element).filter(move |c| c.name == name)
}

pub(crate) fn children_mut<'a>(el: &'a mut Element, name: &'a str) -> impl Iterator<Item = &'a mut Element> {
    el.children.iter_mut().filter_map(XMLNode::as_mut_element).filter(move |c| c.name == name)
}

/// The text of child `name`, trimmed.
pub(crate) fn child_text(el: &Element, name: &str) -> Option<String> {
    el.get_child(name).and_then(|c| c.get_text()).map(|t| t.trim().to_owned())
}

/// The child `name`, appended when missing.
pub(crate) fn child_or_insert<'a>(el: &'a mut Element, name: &str) -> &'a mut Element {
    if el.get_child(name).is_none() {
        el.children.push(XMLNode::Element(Element::new(name)));
    }
    // Cannot fail: a missing child was inserted just above.
    #[allow(clippy::expect_used)]
    el.get_mut_child(name).expect("child was just inserted")
}

/// Replaces all children of `el` by one text node.
pub(crate) fn set_text(el: &mut Element, text: &str) {
    el.children = vec![XMLNode::Text(text.to_owned())];
}

/// Removes every child element named `name`.
pub(crate) fn remove_children(el: &mut Element, name: &str) {
    el.children.retain(|c| c.as_element().map_or(true, |e| e.name != name));
}

/// Builds `<name a1='v1' ...>` with the given attributes.
pub(crate) fn element(name: &str, attrs: &[(&str, &str)]) -> Element {
    let mut el = Element::new(name);
    for (k, v) in attrs {
        set_attr(&mut el, k, v);
    }
    el
}

/// Builds `<name>text</name>`.
pub(crate) fn text_element(name: &str, text: &str) -> Element {
    let mut el = Element::new(name);
    set_text(&mut el, text);
    el
}

pub(crate) fn push(parent: &mut Element, child: Element) {
    parent.children.push(XMLNode::Element(child));
}

#[cfg(test)]
mod tests;
