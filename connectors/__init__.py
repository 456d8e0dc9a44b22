"""Vendor edges: form sources (verify and parse a request), the CRM and the notifier.

Each module implements a small interface defined in ``bridge.ports`` and is imported
lazily by name (see ``bridge.ports.load``), so a relay only loads the vendors it uses.
"""

# Source type name -> "module:Class"; a new source type is one line here plus its module.
SOURCE_TYPES = {
    "typeform": "connectors.typeform:TypeformSource",
    "wordpress": "connectors.wordpress:WordPressSource",
    "google": "connectors.google:GoogleAdsSource",
}
CRM = "connectors.hubspot:HubSpotCRM"
NOTIFIER = "connectors.slack:SlackNotifier"
