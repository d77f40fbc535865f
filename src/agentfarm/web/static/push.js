// "Notify this browser" on the settings page: subscribes this browser (a phone with the
// cockpit on its home screen) to Web Push, or unsubscribes it. Shown only where the browser
// has service workers and the Push API.
(function () {
  "use strict";
  const box = document.getElementById("push");
  if (!box || !("serviceWorker" in navigator) || !("PushManager" in window)) return;
  const button = document.getElementById("push-toggle");
  const state = document.getElementById("push-state");
  const csrf = document.body.dataset.csrf || "";
  box.hidden = false;

  function headers() {
    return { "Content-Type": "application/json", "X-CSRF-Token": csrf };
  }

  function keyBytes(base64url) {
    const padded = base64url.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((base64url.length + 3) % 4);
    const raw = atob(padded);
    return Uint8Array.from(raw, function (c) { return c.charCodeAt(0); });
  }

  async function registration() {
    await navigator.serviceWorker.register("/sw.js", { scope: "/" });
    return navigator.serviceWorker.ready;
  }

  async function show() {
    const reg = await registration();
    const sub = await reg.pushManager.getSubscription();
    button.textContent = sub ? button.dataset.unsubscribe : button.dataset.subscribe;
    button.dataset.subscribed = sub ? "1" : "";
    return sub;
  }

  async function problem(response) {
    try {
      const body = await response.json();
      return body.error.message;
    } catch (e) {
      return "the server answered " + response.status;
    }
  }

  async function toggle() {
    button.disabled = true;
    state.textContent = "";
    try {
      const reg = await registration();
      let sub = await reg.pushManager.getSubscription();
      if (sub) {
        const response = await fetch("/api/push/subscriptions", {
          method: "DELETE", headers: headers(), body: JSON.stringify({ endpoint: sub.endpoint }),
        });
        await sub.unsubscribe();
        state.textContent = response.ok || response.status === 404 ? "This browser is no longer notified." : await problem(response);
      } else {
        const keyResponse = await fetch("/api/push/key");
        const key = (await keyResponse.json()).public_key;
        if (!key) { state.textContent = "Web Push is off on this server."; return; }
        sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(key) });
        const response = await fetch("/api/push/subscriptions", {
          method: "POST", headers: headers(), body: JSON.stringify(sub.toJSON()),
        });
        state.textContent = response.ok ? "This browser will be notified." : await problem(response);
      }
    } catch (e) {
      state.textContent = "Push did not work here: " + e.message + " (notifications allowed for this site?)";
    } finally {
      button.disabled = false;
      show().catch(function () {});
    }
  }

  button.addEventListener("click", toggle);
  show().catch(function (e) { state.textContent = "Push is not available: " + e.message; });
})();
