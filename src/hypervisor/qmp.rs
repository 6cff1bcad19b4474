//! Typed QMP commands over [`Hypervisor::qmp_raw`].

use serde_json::Value;

use super::{HvError, Hypervisor};

/// Runs the `qapi` command `cmd` in `domain`'s QEMU and decodes its `return`.
/// A QMP `error` reply becomes [`HvError::Qmp`].
///
/// ```no_run
/// # use envclone::hypervisor::{qmp, Hypervisor};
/// # fn f(hv: &dyn Hypervisor) -> Result<(), envclone::hypervisor::HvError> {
/// let status = qmp(hv, "web", qapi::qmp::query_status {})?;
/// println!("{:?}", status.status);
/// # Ok(()) }
/// ```
pub fn qmp<H, C>(hv: &H, domain: &str, cmd: C) -> Result<C::Ok, HvError>
where
    H: Hypervisor + ?Sized,
    C: qapi::Command,
{
    let request = qapi::Execute::<C, qapi::Never>::with_command(cmd);
    let json = serde_json::to_string(&request).map_err(|e| HvError::QmpReply {
        domain: domain.to_owned(),
        command: C::NAME.to_owned(),
        detail: format!("cannot encode the arguments: {e}"),
    })?;
    let reply = hv.qmp_raw(domain, &json)?;
    decode_reply(domain, C::NAME, &reply)
}

/// Decodes a QMP reply: `{"return": ...}` or `{"error": {"class", "desc"}}`.
pub(crate) fn decode_reply<T: serde::de::DeserializeOwned>(
    domain: &str,
    command: &str,
    reply: &str,
) -> Result<T, HvError> {
    let bad = |detail: String| HvError::QmpReply { domain: domain.to_owned(), command: command.to_owned(), detail };
    let mut value: Value = serde_json::from_str(reply).map_err(|e| bad(format!("not JSON: {e}")))?;
    if let Some(ret) = value.get_mut("return") {
        return serde_json::from_value(ret.take()).map_err(|e| bad(e.to_string()));
    }
    if let Some(err) = value.get("error") {
        let field = |key: &str| err.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        return Err(HvError::Qmp { domain: domain.to_owned(), class: field("class"), desc: field("desc") });
    }
    Err(bad("neither `return` nor `error`".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reply_returns_the_return_value() {
        let reply = r#"{"return": {"status": "running", "running": true}, "id": "libvirt-12"}"#;
        let status: qapi::qmp::StatusInfo = decode_reply("web", "query-status", reply).unwrap();
        assert!(status.running);
        assert!(matches!(status.status, qapi::qmp::RunState::running));
    }

    #[test]
    fn decode_reply_maps_qmp_error() {
        let reply =
            r#"{"id":"libvirt-3","error":{"class":"CommandNotFound","desc":"The command foo has not been found"}}"#;
        let err = decode_reply::<qapi::Empty>("web", "foo", reply).unwrap_err();
        assert!(matches!(err, HvError::Qmp { ref class, .. } if class == "CommandNotFound"));
    }

    #[test]
    fn decode_reply_refuses_garbage() {
        let err = decode_reply::<qapi::Empty>("web", "stop", "{\"oops\": 1}").unwrap_err();
        assert!(matches!(err, HvError::QmpReply { .. }));
    }
}
