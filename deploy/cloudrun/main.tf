# castellan on Cloud Run in front of a private Cloud Run service: the Terraform version of
# deploy/cloudrun/README.md. terraform init && terraform apply -var project=… -var …

terraform {
  required_providers {
    google = { source = "hashicorp/google", version = ">= 5.0" }
  }
}

variable "project" { type = string }
variable "region" {
  type    = string
  default = "europe-west1"
}
variable "app_image" { type = string }         # the private app
variable "castellan_image" { type = string }   # built from this repository's Dockerfile
variable "public_url" { type = string }        # castellan's own address, e.g. https://auth.example.com
variable "app_host" { type = string }          # where people open the dashboard, e.g. dashboard.example.com
variable "google_client_id" { type = string }
variable "admin_email" { type = string }     # your first administrator
variable "google_client_secret" {
  type      = string
  sensitive = true
}

provider "google" {
  project = var.project
  region  = var.region
}

resource "google_cloud_run_v2_service" "app" {
  name     = "dashboard"
  location = var.region
  template {
    containers { image = var.app_image }
  }
}

resource "google_service_account" "castellan" {
  account_id   = "castellan"
  display_name = "castellan identity-aware proxy"
}

# Only castellan may call the app.
resource "google_cloud_run_v2_service_iam_member" "invoker" {
  name     = google_cloud_run_v2_service.app.name
  location = var.region
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.castellan.email}"
}

resource "google_secret_manager_secret" "client_secret" {
  secret_id = "castellan-google-secret"
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "client_secret" {
  secret      = google_secret_manager_secret.client_secret.id
  secret_data = var.google_client_secret
}

resource "google_secret_manager_secret_iam_member" "castellan_reads_secret" {
  secret_id = google_secret_manager_secret.client_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.castellan.email}"
}

locals {
  castellan_toml = <<-TOML
    public_url = "${var.public_url}"
    local_accounts = false
    trusted_proxies = ["0.0.0.0/0"]
    admins = ["${var.admin_email}"]

    [[providers]]
    id = "google"
    display_name = "Google"
    issuer = "https://accounts.google.com"
    client_id = "${var.google_client_id}"
    client_secret = "$${GOOGLE_CLIENT_SECRET}"

    [[apps]]
    id = "dashboard"
    host = "${var.app_host}"
    upstream = "${google_cloud_run_v2_service.app.uri}"
    upstream_auth = "google-id-token"
  TOML
}

resource "google_cloud_run_v2_service" "castellan" {
  name     = "castellan"
  location = var.region
  template {
    service_account = google_service_account.castellan.email
    scaling {
      min_instance_count = 1 # the SQLite store lives in the instance; see README "State"
      max_instance_count = 1
    }
    containers {
      image = var.castellan_image
      env {
        name  = "CASTELLAN_CONFIG_TOML"
        value = local.castellan_toml
      }
      env {
        name = "GOOGLE_CLIENT_SECRET"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.client_secret.secret_id
            version = "latest"
          }
        }
      }
      startup_probe {
        http_get { path = "/.castellan/healthz" }
      }
    }
  }
  depends_on = [google_secret_manager_secret_iam_member.castellan_reads_secret]
}

# castellan itself is public: it does the authentication.
resource "google_cloud_run_v2_service_iam_member" "public" {
  name     = google_cloud_run_v2_service.castellan.name
  location = var.region
  role     = "roles/run.invoker"
  member   = "allUsers"
}

output "castellan_url" { value = google_cloud_run_v2_service.castellan.uri }
output "redirect_uri" { value = "${var.public_url}/.castellan/callback" }
