// Live updates for the "Train LoRA/DreamBooth" tab: clicks the hidden #lora_trainer_poll button (its handler runs
// with queue=False and refreshes progress, queue, history, gallery and log) while the tab is on screen.
// Loaded into every WebUI page: it does nothing where the tab is absent. Only window.loraTrainer is global.
(function () {
    "use strict";

    var TICK_MS = 500; // how often the timer looks; polls themselves are spaced by the intervals below
    var FAST_MS = 1000; // a job is training or stopping
    var NORMAL_MS = 2000; // a job is waiting
    var SLOW_MS = 10000; // nothing runs
    var STUCK_MS = 20000; // an output still marked pending after this long no longer holds polls back

    var started = false;
    var lastPoll = 0;
    var wasShown = false;
    var forceNext = false;

    function app() {
        try {
            if (typeof gradioApp === "function") {
                var root = gradioApp();
                if (root && typeof root.querySelector === "function") {
                    return root;
                }
            }
        } catch (e) {
            // gradioApp throws before the app exists; fall back to the document
        }
        return document;
    }

    function find(selector) {
        try {
            return app().querySelector(selector);
        } catch (e) {
            return null;
        }
    }

    function isDisplayed(el) {
        if (!el) {
            return false;
        }
        if (el.offsetParent) {
            return true;
        }
        // offsetParent is also null for a position: fixed element; an element that is not rendered has no boxes
        return typeof el.getClientRects === "function" && el.getClientRects().length > 0;
    }

    function tabShown() {
        return isDisplayed(find("#tab_lora_trainer"));
    }

    function pageVisible() {
        return !document.visibilityState || document.visibilityState === "visible";
    }

    function pollButton() {
        var el = find("#lora_trainer_poll");
        if (el && el.tagName && el.tagName.toUpperCase() !== "BUTTON" && el.querySelector) {
            el = el.querySelector("button") || el; // some gradio versions put the id on a wrapper
        }
        return el;
    }

    function outputsPending() {
        // gradio marks an output's status tracker "pending"/"generating" until the handler's reply lands
        return !!find("#lora_trainer_progress .pending, #lora_trainer_progress .generating");
    }

    function interval() {
        var status = "";
        var panel = find("#lora_trainer_progress .lora-trainer-progress");
        if (panel && panel.getAttribute) {
            status = panel.getAttribute("data-status") || "";
        }
        if (status === "running" || status === "stopping") {
            return FAST_MS;
        }
        if (status === "queued") {
            return NORMAL_MS;
        }
        return panel ? SLOW_MS : NORMAL_MS;
    }

    function poll(force) {
        var button = pollButton();
        if (!button || button.disabled || typeof button.click !== "function") {
            return false;
        }
        var now = Date.now();
        if (!force && outputsPending() && now - lastPoll < STUCK_MS) {
            return false;
        }
        lastPoll = now;
        forceNext = false;
        button.click();
        return true;
    }

    function tick() {
        try {
            if (!tabShown()) {
                wasShown = false;
                return;
            }
            if (!pageVisible()) {
                forceNext = true; // refresh as soon as the user looks again
                return;
            }
            var due = forceNext || !wasShown || Date.now() - lastPoll >= interval();
            wasShown = true;
            if (due) {
                poll(false);
            }
        } catch (e) {
            // never let a DOM surprise stop the timer or reach the page
        }
    }

    function copyText(text, el) {
        function done() {
            if (el && el.classList) {
                el.classList.add("lora-trainer-copied");
                setTimeout(function () {
                    el.classList.remove("lora-trainer-copied");
                }, 1200);
            }
        }
        function fallback() {
            var area = document.createElement("textarea");
            area.value = text;
            area.setAttribute("readonly", "");
            area.style.position = "fixed";
            area.style.opacity = "0";
            document.body.appendChild(area);
            area.select();
            try {
                if (document.execCommand("copy")) {
                    done();
                }
            } catch (e) {
                // nothing more to try
            }
            document.body.removeChild(area);
        }
        // navigator.clipboard exists only on https or localhost; a WebUI on the LAN needs the fallback
        if (navigator.clipboard && window.isSecureContext) {
            navigator.clipboard.writeText(text).then(done, fallback);
        } else {
            fallback();
        }
    }

    function onClick(event) {
        var path = typeof event.composedPath === "function" ? event.composedPath() : [event.target];
        for (var i = 0; i < path.length; i++) {
            var el = path[i];
            if (el && el.getAttribute && el.hasAttribute && el.hasAttribute("data-lora-trainer-copy")) {
                copyText(el.getAttribute("data-lora-trainer-copy"), el);
                return;
            }
        }
    }

    function start() {
        if (started) {
            return;
        }
        started = true;
        setInterval(tick, TICK_MS);
        document.addEventListener("click", onClick);
        document.addEventListener("visibilitychange", function () {
            if (pageVisible()) {
                forceNext = true;
                tick();
            }
        });
    }

    window.loraTrainer = {
        pollNow: function () {
            try {
                return poll(true);
            } catch (e) {
                return false;
            }
        },
    };

    if (typeof onUiLoaded === "function") {
        onUiLoaded(start);
    } else if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
})();
