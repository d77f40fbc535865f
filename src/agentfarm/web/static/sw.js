// The cockpit's service worker: shows Web Push notifications about runs and opens the run's
// page when one is tapped. Nothing is cached; the cockpit stays a live page.
"use strict";

self.addEventListener("push", function (event) {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch (e) {
    data = { body: event.data ? event.data.text() : "" };
  }
  // Only a path on this site is opened, whatever the payload says.
  const url = (typeof data.url === "string" && data.url.startsWith("/") && !data.url.startsWith("//")) ? data.url : "/";
  event.waitUntil(self.registration.showNotification(String(data.title || "agentfarm"), {
    body: String(data.body || ""),
    tag: data.tag ? String(data.tag) : undefined,
    icon: "/static/icon-192.png",
    data: { url: url },
  }));
});

self.addEventListener("notificationclick", function (event) {
  event.notification.close();
  const url = (event.notification.data && event.notification.data.url) || "/";
  event.waitUntil(self.clients.matchAll({ type: "window", includeUncontrolled: true }).then(function (list) {
    for (const client of list) {
      if (new URL(client.url).pathname === url && "focus" in client) return client.focus();
    }
    return self.clients.openWindow(url);
  }));
});
